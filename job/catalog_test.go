package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/testutil"
)

// TestOnlyStandardLibrary: the control plane imports this package, and must
// not carry the disk stack (go-diskfs, go-qcow2reader) or anything else.
func TestOnlyStandardLibrary(t *testing.T) {
	goBin := testutil.RequireCommand(t, "go")
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	var nonStd []string
	for _, p := range strings.Fields(string(out)) {
		if p != "github.com/byoi/byoi/job" {
			nonStd = append(nonStd, p)
		}
	}
	if len(nonStd) > 0 {
		t.Fatalf("job depends on non-standard packages: %v", nonStd)
	}
}

// TestCatalogComplete walks every code: it has a text, a name equal to the
// constant's value (codes are stable strings), and its format's verbs
// match the arguments its comment lists.
func TestCatalogComplete(t *testing.T) {
	verb := regexp.MustCompile(`%(\[\d+\])?[-+# 0]*\d*(\.\d+)?[a-zA-Z%]`)
	seen := map[string]bool{}
	for _, c := range Codes() {
		f := Format(c)
		if strings.TrimSpace(f) == "" {
			t.Errorf("%s has no text", c)
		}
		if seen[strings.ToLower(string(c))] {
			t.Errorf("%s: code repeated ignoring case", c)
		}
		seen[strings.ToLower(string(c))] = true
		n := 0
		for _, v := range verb.FindAllString(f, -1) {
			if v != "%%" {
				n++
			}
		}
		args := make([]any, n)
		for i := range args {
			args[i] = 7
		}
		if got := Text(c, args...); strings.Contains(got, "MISSING") || strings.Contains(got, "EXTRA") {
			t.Errorf("%s: format %q does not take %d arguments: %q", c, f, n, got)
		}
		if FaultOf(c) == FaultNone && !strings.HasPrefix(string(c), "Msg") && !strings.HasPrefix(string(c), "Warn") {
			t.Errorf("%s: an error code without a fault", c)
		}
	}
	if len(Codes()) < 100 {
		t.Errorf("catalog has %d codes, fewer than expected", len(Codes()))
	}
	if got := Text("NoSuchCode"); got != "NoSuchCode" {
		t.Errorf("unknown code: %q", got)
	}
	if FaultOf(ChecksumMismatch) != FaultCustomer || FaultOf(WriteFailed) != FaultProvider || FaultOf("x") != FaultProvider {
		t.Error("faults")
	}
}

// TestOVHWords pins the messages users and their scripts know, word for word
// (reference/API.md).
func TestOVHWords(t *testing.T) {
	for c, want := range map[Code]string{
		ChecksumPair:      "Please provide checkSum AND checkSumType or none of them",
		BadChecksumType:   "Bad checkSumType, expected : sha1, sha256, md5, sha512.",
		Qcow2TooBig:       "Could not download, qcow2 image is too big to download in memory.",
		GPTRelocateFailed: "Can not move backup GPT data structures to the end of disk.",
		ConfigDriveFailed: "Could not create configdrive on disk.",
		APIInvalidSig:     "Invalid signature",
		APIOutOfTime:      "Query out of time",
	} {
		if got := Text(c); got != want {
			t.Errorf("%s = %q, want %q", c, got, want)
		}
	}
	for _, tt := range []struct {
		c    Code
		args []any
		want string
	}{
		{ChecksumMismatch, []any{"sha256", "ab", "cd"}, "Bad sha256 for downloaded file, got : ab while expecting cd."},
		{DownloadFailed, []any{"https://h/i"}, "Could not download image located : https://h/i."},
		{WriteFailed, []any{"qcow2"}, "Can't write qcow2 on disk."},
		{FormatMismatch, []any{"raw", "qcow2"}, "image provided format is raw which does not match expected qcow2 format"},
		{NoPartitionTable, []any{"ext4"}, "image provided format is not of type raw because no partition table was found. It seems to contain: ext4"},
		{ImageTooLarge, []any{10, "/dev/sda", 5}, "image provided has a size of 10 bytes which is larger than /dev/sda of 5 bytes"},
		{APITaskRunning, []any{123, "reinstallServer", "doing", "ns1.example"}, "Task 123 of type reinstallServer with status doing is already running on server ns1.example"},
		{ManifestMismatch, []any{"d.vmdk", "SHA256", "ab", "cd"}, "Bad SHA256 for d.vmdk in the OVA manifest, got : ab while expecting cd."},
	} {
		if got := Text(tt.c, tt.args...); got != tt.want {
			t.Errorf("%s = %q, want %q", tt.c, got, tt.want)
		}
	}
}

type codedErr struct{ c Code }

func (e codedErr) Error() string     { return "inner " + string(e.c) }
func (e codedErr) MessageCode() Code { return e.c }

func TestDescribe(t *testing.T) {
	if c, m := Describe(nil); c != "" || m != "" {
		t.Error("nil")
	}
	// The outermost coded error wins, with its text (cause included).
	err := fmt.Errorf("step: %w", Wrap(codedErr{ChecksumMismatch}, WriteFailed, "raw"))
	if c, m := Describe(err); c != WriteFailed || m != "Can't write raw on disk. inner ChecksumMismatch" {
		t.Errorf("Describe = %s %q", c, m)
	}
	if c, _ := Describe(errors.Join(codedErr{DownloadFailed}, errors.New("wipe failed"))); c != DownloadFailed {
		t.Errorf("joined: %s", c)
	}
	if c, m := Describe(fmt.Errorf("x: %w", context.Canceled)); c != Interrupted || m != "interrupted" {
		t.Errorf("cancel: %s %q", c, m)
	}
	if c, m := Describe(errors.New("boom")); c != Internal || m != "boom" {
		t.Errorf("plain: %s %q", c, m)
	}
	if Message(Errorf(JobMissing)) != "no job" {
		t.Error("Message")
	}
	var ve *ValidationError
	_, err = Parse([]byte(`{"URL":"https://h/i","type":"vmdk"}`))
	if !errors.As(err, &ve) || ve.Code != BadImageType {
		t.Fatalf("%v", err)
	}
	if c, _ := Describe(err); c != BadImageType {
		t.Errorf("validation code %s", c)
	}
}

// TestValidationCodes triggers every job-spec code through Parse, Validate
// or ParseHeaderFlag and checks the code the error carries.
func TestValidationCodes(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	leg := func(extra string) string { return `{"URL":"https://h/i","type":"raw"` + extra + `}` }
	cd := func(inner string) string { return leg(`,"configdrive":{` + inner + `}`) }
	ed := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO82/7e9WQiwfzkfAePAXbwRasmsmauPfV02uYKlHDB9"
	triggered := map[Code]bool{}
	for _, tt := range []struct {
		code Code
		body string
	}{
		{JobTooLarge, `{"URL":"` + long(MaxJobSize) + `"}`},
		{JobNotObject, `[]`},
		{JobSyntax, `{"URL":}`},
		{JobTruncated, `{"URL":"x"`},
		{JobTrailingData, `{} {}`},
		{JobUnknownField, `{"url":"https://h/i"}`},
		{JobDuplicateField, `{"URL":"a","URL":"b"}`},
		{JobFieldKind, `{"URL":1}`},
		{OSUnsupported, `{"operatingSystem":"debian12_64"}`},
		{StorageMany, `{"operatingSystem":"byoi_64","storage":[{},{}]}`},
		{StorageHardwareRaid, `{"operatingSystem":"byoi_64","storage":[{"hardwareRaid":[{}]}]}`},
		{StoragePartitioning, `{"operatingSystem":"byoi_64","storage":[{"partitioning":{"schemeName":"default"}}]}`},
		{CustomizationUnused, `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","language":"fr-fr"}}`},
		{MetadataTwice, `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","configDriveMetadata":{"a":"1"}},"properties":{"a":"2"}}`},
		{URLMissing, `{"type":"raw"}`},
		{URLTooLong, `{"URL":"https://h/` + long(17<<10) + `","type":"raw"}`},
		{URLUnparsable, `{"URL":"http://[::1","type":"raw"}`},
		{URLScheme, `{"URL":"ftp://h/i","type":"raw"}`},
		{URLNoHost, `{"URL":"https:///i","type":"raw"}`},
		{BadImageType, `{"URL":"https://h/i","type":"iso"}`},
		{ChecksumPair, leg(`,"checkSum":"ab"`)},
		{BadChecksumType, leg(`,"checkSum":"ab","checkSumType":"crc32"`)},
		{ChecksumFormat, leg(`,"checkSum":"ab","checkSumType":"md5"`)},
		{DiskGroupInvalid, leg(`,"diskGroupId":-1`)},
		{HeadersTooMany, leg(`,"httpHeader":[` + strings.Repeat(`{"key":"a","value":"b"},`, MaxHeaders) + `{"key":"a","value":"b"}]`)},
		{HeaderName, leg(`,"httpHeader":[{"key":"a b","value":"b"}]`)},
		{HeaderValueTooLong, leg(`,"httpHeader":[{"key":"a","value":"` + long(MaxHeaderValueLen+1) + `"}]`)},
		{HeaderValueControl, leg(`,"httpHeader":[{"key":"a","value":"\r\n"}]`)},
		{HeaderDuplicate, leg(`,"httpHeader":[{"key":"a","value":"1"},{"key":"A","value":"2"}]`)},
		{DescriptionTooLong, leg(`,"description":"` + long(5000) + `"`)},
		{ImageChecksValue, leg(`,"imageChecks":"loose"`)},
		{NetworkDataValue, leg(`,"networkData":"dhcp"`)},
		{EFIPathTooLong, `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","efiBootloaderPath":"` + long(2000) + `"}}`},
		{EFIPathControl, `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","efiBootloaderPath":"\t"}}`},
		{ConfigDriveTooLarge, cd(`"userData":"` + long(MaxConfigDriveSize+1) + `"`)},
		{HostnameTooLong, cd(`"hostname":"` + strings.Repeat("a.", 130) + `a"`)},
		{HostnameEmptyLabel, cd(`"hostname":"a..b"`)},
		{HostnameLabelLong, cd(`"hostname":"` + long(64) + `"`)},
		{HostnameLabelStart, cd(`"hostname":"1a"`)},
		{HostnameLabelEnd, cd(`"hostname":"a-"`)},
		{HostnameLabelChars, cd(`"hostname":"a_b"`)},
		{UserDataTooLarge, cd(`"userData":"` + long(MaxUserDataSize+1) + `"`)},
		{MetadataTooMany, `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","configDriveMetadata":{` + manyKeys(MaxMetadataKeys+1) + `}}}`},
		{MetadataEmptyKey, cd(`"userMetadatas":[{"key":"","value":"v"}]`)},
		{MetadataKeyTooLong, cd(`"userMetadatas":[{"key":"` + long(300) + `","value":"v"}]`)},
		{MetadataKeyReserved, cd(`"userMetadatas":[{"key":"dsmode","value":"net"}]`)},
		{MetadataValueLong, cd(`"userMetadatas":[{"key":"k","value":"` + long(MaxMetadataValueLen+1) + `"}]`)},
		{MetadataDuplicate, cd(`"userMetadatas":[{"key":"k","value":"1"},{"key":"k","value":"2"}]`)},
		{SSHKeyFieldTooLong, cd(`"sshKey":"` + long(65<<10) + `"`)},
		{SSHKeyTooMany, cd(`"sshKey":"` + strings.Repeat(ed+`\n`, 65) + `"`)},
		{SSHKeyNone, cd(`"sshKey":"\n\n"`)},
		{SSHKeyControl, cd(`"sshKey":"ssh-ed25519 \u0001"`)},
		{SSHKeyType, cd(`"sshKey":"ssh-foo AAAA"`)},
		{SSHKeyNoData, cd(`"sshKey":"ssh-ed25519"`)},
		{SSHKeyBase64, cd(`"sshKey":"ssh-ed25519 !!!"`)},
		{SSHKeyTypeMismatch, cd(`"sshKey":"ssh-ed25519 AAAAB3NzaC1yc2E="`)},
		{SSHKeyTruncated, cd(`"sshKey":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"`)},
		{SSHKeyEd25519Size, cd(`"sshKey":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAAQA="`)},
	} {
		_, err := Parse([]byte(tt.body))
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("%s: err %v", tt.code, err)
			continue
		}
		if ve.Code != tt.code {
			t.Errorf("%s: got code %s (%s)", tt.code, ve.Code, ve.Message)
		}
		triggered[ve.Code] = true
	}
	// Codes that Parse cannot reach: a nil Job, a bad JSON kind the
	// decoder rejects, the flag parser.
	for code, err := range map[Code]error{
		JobMissing:        (*Job)(nil).Validate(),
		HeaderFlagNoColon: second(ParseHeaderFlag("Bearer x")),
		HeaderFlagName:    second(ParseHeaderFlag("a b: x")),
		JobFieldType: decodeStrict([]byte(`{"F":1}`), &struct {
			F float64 `json:"F"`
		}{}),
		JobInvalidJSON: jsonSyntaxError(errors.New("other"), json.NewDecoder(strings.NewReader(""))),
		JobShape: decodeStrict([]byte(`{"T":{}}`), &struct {
			T time.Time `json:"T"`
		}{}),
		SSHKeyEmpty:      sshKeyInvalid(second(ParseSSHPublicKey("  "))),
		SSHKeyCurve:      sshKeyInvalid(second(ParseSSHPublicKey("ecdsa-sha2-nistp256 " + b64(wire([]byte("ecdsa-sha2-nistp256"), []byte("nistp384"), make([]byte, 65)))))),
		SSHKeyECDSAPoint: sshKeyInvalid(second(ParseSSHPublicKey("ecdsa-sha2-nistp256 " + b64(wire([]byte("ecdsa-sha2-nistp256"), []byte("nistp256"), []byte{4}))))),
		SSHKeyEmptyInt:   sshKeyInvalid(second(ParseSSHPublicKey("ssh-rsa " + b64(wire([]byte("ssh-rsa"), []byte{}, []byte{1}))))),
		SSHKeyTrailing:   sshKeyInvalid(second(ParseSSHPublicKey("ssh-ed25519 " + b64(wire([]byte("ssh-ed25519"), make([]byte, 32), []byte{1}))))),
		SSHKeyRSASmall:   sshKeyInvalid(second(ParseSSHPublicKey("ssh-rsa " + b64(wire([]byte("ssh-rsa"), []byte{1}, []byte{0xff}))))),
	} {
		if got := codeOf(err); got != code {
			t.Errorf("%s: got %s (%v)", code, got, err)
		}
		triggered[code] = true
	}
	// Every code of the job spec's group was triggered here.
	for _, c := range Codes() {
		if IsJobSpecCode(c) && !triggered[c] {
			t.Errorf("job spec code %s is never triggered by this test", c)
		}
	}
	for c := range triggered {
		if !IsJobSpecCode(c) {
			t.Errorf("%s is triggered by validation but not in the job spec group", c)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func manyKeys(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":"v"`, i)
	}
	return b.String()
}

func codeOf(err error) Code {
	c, _ := Describe(err)
	if c == Internal {
		return ""
	}
	return c
}
