package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const secret = "S3CR3T-d0-n0t-l0g"

const sshTypesTail = " is not supported (want ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com or ssh-dss; options before the key are not accepted)"

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustParse(t *testing.T, data string) *Job {
	t.Helper()
	j, err := Parse([]byte(data))
	if err != nil {
		t.Fatalf("Parse(%s): %v", data, err)
	}
	return j
}

func TestParseJobShapesEquivalent(t *testing.T) {
	full := &Job{
		ImageURL:     "https://images.example.com/debian-12.qcow2?X-Signature=SECRET-IN-QUERY",
		ImageType:    "qcow2",
		Checksum:     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		ChecksumType: "sha256",
		Headers: []Header{
			{Name: "Authorization", Value: "Bearer SECRET-TOKEN-VALUE"},
			{Name: "X-Trace", Value: "abc"},
		},
		DiskGroupID: 2,
		ConfigDrive: &ConfigDrive{
			Hostname: "web1.example.com",
			SSHKey:   keyEd25519,
			UserData: []byte("#cloud-config\npackages: [nginx]\nruncmd:\n  - echo hello > /root/hello\n"),
			Metadata: map[string]string{"env": "prod", "role": "web"},
		},
	}
	minimal := &Job{ImageURL: "http://10.0.0.1/disk.raw", ImageType: "raw", DiskGroupID: 1}
	for _, tt := range []struct {
		legacy, reinstall string
		want              *Job
	}{
		{"job-legacy.json", "job-reinstall.json", full},
		{"job-legacy-minimal.json", "job-reinstall-minimal.json", minimal},
	} {
		a, err := Parse(readFixture(t, tt.legacy))
		if err != nil {
			t.Fatalf("%s: %v", tt.legacy, err)
		}
		b, err := Parse(readFixture(t, tt.reinstall))
		if err != nil {
			t.Fatalf("%s: %v", tt.reinstall, err)
		}
		if !reflect.DeepEqual(a, tt.want) {
			t.Errorf("%s:\n got %#v\nwant %#v\n(headers %v / %v)", tt.legacy, *a, *tt.want, a.Headers, tt.want.Headers)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s and %s differ:\n%#v\n%#v", tt.legacy, tt.reinstall, *a, *b)
		}
	}
}

func TestParseJobNormalising(t *testing.T) {
	// Headers: legacy keeps the given order, reinstall sorts by name.
	j := mustParse(t, `{"URL":"https://h/i","type":"raw","httpHeader":[{"key":"Z-B","value":"1"},{"key":"A-A","value":"2"}]}`)
	if got := fmt.Sprint(j.Headers); got != "[Z-B: <redacted> A-A: <redacted>]" {
		t.Errorf("legacy header order: %s", got)
	}
	j = mustParse(t, `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","httpHeaders":{"Z-B":"1","A-A":"2","M":"3"}}}`)
	if got := fmt.Sprint(j.Headers); got != "[A-A: <redacted> M: <redacted> Z-B: <redacted>]" {
		t.Errorf("reinstall header order: %s", got)
	}
	if j.Headers[0].Value != "2" || j.Headers[2].Value != "1" {
		t.Errorf("header values lost their names: %+v", j.Headers)
	}

	// Every field may be null.
	j = mustParse(t, `{"URL":"https://h/i","type":"raw","checkSum":null,"checkSumType":null,"configdrive":null,"description":null,"diskGroupId":null,"httpHeader":null}`)
	if j.ConfigDrive != nil || j.DiskGroupID != 1 || j.Headers != nil {
		t.Errorf("nulls: %#v", *j)
	}
	j = mustParse(t, `{"URL":"https://h/i","type":"raw","configdrive":{"enable":null,"hostname":null,"sshKey":null,"userData":null,"userMetadatas":null},"httpHeader":[{"key":"A","value":null}]}`)
	if j.ConfigDrive != nil || len(j.Headers) != 1 || j.Headers[0].Value != "" {
		t.Errorf("nulls in configdrive: %#v", *j)
	}
	j = mustParse(t, `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","imageCheckSum":null,"imageCheckSumType":null,"efiBootloaderPath":null,"hostname":null,"sshKey":null,"configDriveUserData":null,"configDriveMetadata":null,"httpHeaders":null},"storage":null}`)
	if j.ConfigDrive != nil || j.DiskGroupID != 1 {
		t.Errorf("reinstall nulls: %#v", *j)
	}

	// ConfigDrive presence.
	for _, tt := range []struct {
		body string
		want *ConfigDrive
	}{
		{`"configdrive":{"enable":true}`, &ConfigDrive{}},
		{`"configdrive":{"enable":false}`, nil},
		{`"configdrive":{}`, nil},
		{`"configdrive":{"enable":false,"hostname":"h1"}`, &ConfigDrive{Hostname: "h1"}}, // fields set win over enable:false
		{`"configdrive":{"userData":"x"}`, &ConfigDrive{UserData: []byte("x")}},
		{`"configdrive":{"userMetadatas":[{"key":"k","value":""}]}`, &ConfigDrive{Metadata: map[string]string{"k": ""}}},
		{`"configdrive":{"userMetadatas":[]}`, nil},
		{`"configdrive":{"sshKey":"` + keyEd25519 + `"}`, &ConfigDrive{SSHKey: keyEd25519}},
	} {
		j := mustParse(t, `{"URL":"https://h/i","type":"raw",`+tt.body+`}`)
		if !reflect.DeepEqual(j.ConfigDrive, tt.want) {
			t.Errorf("%s: ConfigDrive = %#v, want %#v", tt.body, j.ConfigDrive, tt.want)
		}
	}
	for _, tt := range []struct {
		custom string
		want   *ConfigDrive
	}{
		{`"hostname":"h1"`, &ConfigDrive{Hostname: "h1"}},
		{`"configDriveUserData":"x"`, &ConfigDrive{UserData: []byte("x")}},
		{`"configDriveMetadata":{"a":"b"}`, &ConfigDrive{Metadata: map[string]string{"a": "b"}}},
		{`"configDriveMetadata":{}`, nil},
		{`"efiBootloaderPath":"\\efi\\debian\\grubx64.efi"`, nil},
	} {
		j := mustParse(t, `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw",`+tt.custom+`}}`)
		if !reflect.DeepEqual(j.ConfigDrive, tt.want) {
			t.Errorf("%s: ConfigDrive = %#v, want %#v", tt.custom, j.ConfigDrive, tt.want)
		}
	}
	j = mustParse(t, `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","efiBootloaderPath":"\\efi\\debian\\grubx64.efi"}}`)
	if j.EFIBootloaderPath != `\efi\debian\grubx64.efi` {
		t.Errorf("EFIBootloaderPath = %q", j.EFIBootloaderPath)
	}

	// Several SSH keys, CRLF and blanks: normalised to canonical lines.
	j = mustParse(t, `{"URL":"https://h/i","type":"raw","configdrive":{"sshKey":" `+keyEd25519+`  \r\n\r\n`+keyRSA2048+`\r\n"}}`)
	if want := keyEd25519 + "\n" + keyRSA2048; j.ConfigDrive.SSHKey != want {
		t.Errorf("SSHKey = %q, want %q", j.ConfigDrive.SSHKey, want)
	}
	if got := j.ConfigDrive.SSHKeys(); !reflect.DeepEqual(got, []string{keyEd25519, keyRSA2048}) {
		t.Errorf("SSHKeys() = %q", got)
	}

	// Upper-case checksum hex is accepted and lowered; diskGroupId 0 is 1.
	j = mustParse(t, `{"URL":"https://h/i","type":"raw","checkSum":"D41D8CD98F00B204E9800998ECF8427E","checkSumType":"md5","diskGroupId":0}`)
	if j.Checksum != "d41d8cd98f00b204e9800998ecf8427e" || j.DiskGroupID != 1 {
		t.Errorf("checksum/disk group: %#v", *j)
	}
	for typ, n := range map[string]int{"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128} {
		mustParse(t, fmt.Sprintf(`{"URL":"https://h/i","type":"qcow2","checkSum":"%s","checkSumType":"%s"}`, strings.Repeat("a", n), typ))
	}
	// RFC 1035 hostnames: 63-character labels and FQDNs are fine.
	for _, h := range []string{"a", "web-1", "a" + strings.Repeat("b", 62), "web1.example.com", "A-9.B-c.d"} {
		mustParse(t, `{"URL":"https://h/i","type":"raw","configdrive":{"hostname":"`+h+`"}}`)
	}
}

func legacyBody(extra string) string {
	return `{"URL":"https://images.example.com/i.img","type":"raw"` + extra + `}`
}

func reinstallBody(custom, extra string) string {
	return `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://images.example.com/i.img","imageType":"raw"` + custom + `}` + extra + `}`
}

func TestParseJobErrors(t *testing.T) {
	sha := strings.Repeat("a", 64)
	label64 := strings.Repeat("a", 64)
	long := strings.TrimSuffix(strings.Repeat(strings.Repeat("a", 63)+".", 4), ".") // 255
	manyMeta := make([]string, 129)
	for i := range manyMeta {
		manyMeta[i] = fmt.Sprintf(`{"key":"k%d","value":"v"}`, i)
	}
	tests := []struct {
		name, in, field, want string
	}{
		// OVH's own messages, word for word.
		{"type vmdk legacy", `{"URL":"https://h/i","type":"vmdk"}`, "type", "Bad format image, expected : qcow2, raw, ova."},
		{"type upper", `{"URL":"https://h/i","type":"QCOW2"}`, "type", "Bad format image, expected : qcow2, raw, ova."},
		{"type missing", `{"URL":"https://h/i"}`, "type", "Bad format image, expected : qcow2, raw, ova."},
		{"imageType vmdk", `{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"vmdk"}}`, "customizations.imageType", "Bad format image, expected : qcow2, raw, ova."},
		{"checksum alone", legacyBody(`,"checkSum":"` + sha + `"`), "checkSum", "Please provide checkSum AND checkSumType or none of them"},
		{"checksum type alone", legacyBody(`,"checkSumType":"sha256"`), "checkSumType", "Please provide checkSum AND checkSumType or none of them"},
		{"reinstall checksum alone", reinstallBody(`,"imageCheckSum":"`+sha+`"`, ""), "customizations.imageCheckSum", "Please provide checkSum AND checkSumType or none of them"},
		{"checksum type crc32", legacyBody(`,"checkSum":"` + sha + `","checkSumType":"crc32"`), "checkSumType", "Bad checkSumType, expected : sha1, sha256, md5, sha512."},
		{"checksum type upper", legacyBody(`,"checkSum":"` + sha + `","checkSumType":"SHA256"`), "checkSumType", "Bad checkSumType, expected : sha1, sha256, md5, sha512."},
		{"checksum type reinstall", reinstallBody(`,"imageCheckSum":"`+sha+`","imageCheckSumType":"sha3"`, ""), "customizations.imageCheckSumType", "Bad checkSumType, expected : sha1, sha256, md5, sha512."},
		// Checksums.
		{"checksum short", legacyBody(`,"checkSum":"abc","checkSumType":"sha256"`), "checkSum", "checkSum must be 64 hexadecimal digits for sha256"},
		{"checksum md5 length", legacyBody(`,"checkSum":"` + sha + `","checkSumType":"md5"`), "checkSum", "checkSum must be 32 hexadecimal digits for md5"},
		{"checksum not hex", legacyBody(`,"checkSum":"` + strings.Repeat("g", 40) + `","checkSumType":"sha1"`), "checkSum", "checkSum must be 40 hexadecimal digits for sha1"},
		{"checksum spaces", legacyBody(`,"checkSum":" ` + strings.Repeat("a", 31) + `","checkSumType":"md5"`), "checkSum", "checkSum must be 32 hexadecimal digits for md5"},
		// URLs.
		{"url missing", `{"type":"raw"}`, "URL", "image URL is missing"},
		{"url ftp", `{"URL":"ftp://h/i","type":"raw"}`, "URL", "image URL must start with http:// or https://"},
		{"url file", `{"URL":"file:///etc/shadow","type":"raw"}`, "URL", "image URL must start with http:// or https://"},
		{"url relative", `{"URL":"images/i.raw","type":"raw"}`, "URL", "image URL must start with http:// or https://"},
		{"url no host", `{"URL":"https:///i.raw","type":"raw"}`, "URL", "image URL has no host name"},
		{"url opaque", `{"URL":"https:h","type":"raw"}`, "URL", "image URL has no host name"},
		{"url port only", `{"URL":"http://:80/i","type":"raw"}`, "URL", "image URL has no host name"},
		{"url unparsable", `{"URL":"http://[::1/i","type":"raw"}`, "URL", "image URL cannot be parsed as a URL"},
		{"url space in host", `{"URL":"http://a b/i","type":"raw"}`, "URL", "image URL cannot be parsed as a URL"},
		{"url reinstall", `{"operatingSystem":"byoi_64","customizations":{"imageURL":"gopher://h/i","imageType":"raw"}}`, "customizations.imageURL", "image URL must start with http:// or https://"},
		{"url too long", `{"URL":"https://h/` + strings.Repeat("a", 16<<10) + `","type":"raw"}`, "URL", "image URL is 16394 bytes, more than the 16 KiB limit"},
		// Disk group.
		{"disk group negative", legacyBody(`,"diskGroupId":-1`), "diskGroupId", "diskGroupId must be a positive disk group number (0 or absent means the default group 1), got -1"},
		{"disk group negative reinstall", reinstallBody("", `,"storage":[{"diskGroupId":-3}]`), "storage.diskGroupId", "diskGroupId must be a positive disk group number (0 or absent means the default group 1), got -3"},
		{"disk group float", legacyBody(`,"diskGroupId":1.5`), "diskGroupId", `field "diskGroupId" must be an integer or null`},
		{"disk group exp", legacyBody(`,"diskGroupId":1e2`), "diskGroupId", `field "diskGroupId" must be an integer or null`},
		{"disk group huge", legacyBody(`,"diskGroupId":99999999999999999999`), "diskGroupId", `field "diskGroupId" must be an integer or null`},
		{"disk group string", legacyBody(`,"diskGroupId":"2"`), "diskGroupId", `field "diskGroupId" must be an integer or null`},
		{"two storage entries", reinstallBody("", `,"storage":[{"diskGroupId":1},{"diskGroupId":2}]`), "storage", "storage has 2 entries: a BYOI image is written to a single disk group, give one"},
		// Hostnames (RFC 1035 2.3.1).
		{"hostname digit first", legacyBody(`,"configdrive":{"hostname":"1web"}`), "configdrive.hostname", `hostname label "1web" must start with a letter (RFC 1035)`},
		{"hostname hyphen last", legacyBody(`,"configdrive":{"hostname":"web-"}`), "configdrive.hostname", `hostname label "web-" must end with a letter or digit (RFC 1035)`},
		{"hostname underscore", legacyBody(`,"configdrive":{"hostname":"we_b"}`), "configdrive.hostname", `hostname label "we_b" may contain only letters, digits and hyphens (RFC 1035)`},
		{"hostname empty label", legacyBody(`,"configdrive":{"hostname":"a..b"}`), "configdrive.hostname", `hostname "a..b" has an empty label (RFC 1035: labels between dots are 1 to 63 characters)`},
		{"hostname trailing dot", reinstallBody(`,"hostname":"web."`, ""), "customizations.hostname", `hostname "web." has an empty label (RFC 1035: labels between dots are 1 to 63 characters)`},
		{"hostname label 64", legacyBody(`,"configdrive":{"hostname":"` + label64 + `"}`), "configdrive.hostname", `hostname label "` + label64 + `" is longer than 63 characters (RFC 1035)`},
		{"hostname 255", legacyBody(`,"configdrive":{"hostname":"` + long + `"}`), "configdrive.hostname", "hostname is 255 characters, more than 253"},
		{"hostname second label", legacyBody(`,"configdrive":{"hostname":"web.2nd"}`), "configdrive.hostname", `hostname label "2nd" must start with a letter (RFC 1035)`},
		// Headers: named, never their values.
		{"header name space", legacyBody(`,"httpHeader":[{"key":"X-Ok","value":"1"},{"key":"Bad Name","value":"1"}]`), "httpHeader", "HTTP header 2: the name is not a valid HTTP header name (RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)"},
		{"header name empty", legacyBody(`,"httpHeader":[{"key":"","value":"1"}]`), "httpHeader", "HTTP header 1: the name is not a valid HTTP header name (RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)"},
		{"header name colon", reinstallBody(`,"httpHeaders":{"X-A:b":"1"}`, ""), "customizations.httpHeaders", "HTTP header 1: the name is not a valid HTTP header name (RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)"},
		{"header value CRLF", legacyBody(`,"httpHeader":[{"key":"X-Auth","value":"` + secret + `\r\nX-Evil: 1"}]`), "httpHeader", `HTTP header "X-Auth": the value contains a line break or another control character`},
		{"header value LF reinstall", reinstallBody(`,"httpHeaders":{"Authorization":"Bearer `+secret+`\n"}`, ""), "customizations.httpHeaders", `HTTP header "Authorization": the value contains a line break or another control character`},
		{"header value NUL", legacyBody(`,"httpHeader":[{"key":"X-Auth","value":"` + secret + `\u0000"}]`), "httpHeader", `HTTP header "X-Auth": the value contains a line break or another control character`},
		{"header duplicate", legacyBody(`,"httpHeader":[{"key":"Authorization","value":"a"},{"key":"X","value":"b"},{"key":"authorization","value":"c"}]`), "httpHeader", `HTTP header "authorization" is given more than once`},
		{"header duplicate case reinstall", reinstallBody(`,"httpHeaders":{"X-Token":"a","x-token":"b"}`, ""), "customizations.httpHeaders", `HTTP header "x-token" is given more than once`},
		{"header duplicate key reinstall", reinstallBody(`,"httpHeaders":{"X-Token":"a","X-Token":"b"}`, ""), "customizations.httpHeaders.X-Token", `field "customizations.httpHeaders.X-Token" is given more than once`},
		{"header value too long", legacyBody(`,"httpHeader":[{"key":"X-Big","value":"` + strings.Repeat("v", 16<<10+1) + `"}]`), "httpHeader", `HTTP header "X-Big": the value is longer than 16 KiB`},
		// ConfigDrive content.
		{"ssh key bad", legacyBody(`,"configdrive":{"sshKey":"ssh-rsa AAAA"}`), "configdrive.sshKey", "sshKey: ssh key of type ssh-rsa: key data does not start with its type (damaged or mismatched key)"},
		{"ssh key type", reinstallBody(`,"sshKey":"ssh-xyz AAAA"`, ""), "customizations.sshKey", `sshKey: ssh key type "ssh-xyz"` + sshTypesTail},
		{"ssh key second line", legacyBody(`,"configdrive":{"sshKey":"` + keyEd25519 + `\nnot a key"}`), "configdrive.sshKey", `sshKey line 2: ssh key type "not"` + sshTypesTail},
		{"ssh key blank", legacyBody(`,"configdrive":{"sshKey":"  \n "}`), "configdrive.sshKey", "sshKey holds no key"},
		{"dsmode legacy", legacyBody(`,"configdrive":{"userMetadatas":[{"key":"dsmode","value":"local"}]}`), "configdrive.userMetadatas", `configdrive metadata key "dsmode" is not allowed: it changes how cloud-init uses the ConfigDrive`},
		{"dsmode reinstall", reinstallBody(`,"configDriveMetadata":{"dsmode":"net"}`, ""), "customizations.configDriveMetadata", `configdrive metadata key "dsmode" is not allowed: it changes how cloud-init uses the ConfigDrive`},
		{"metadata empty key", legacyBody(`,"configdrive":{"userMetadatas":[{"key":"","value":"x"}]}`), "configdrive.userMetadatas", "configdrive metadata has an empty key"},
		{"metadata null item", legacyBody(`,"configdrive":{"userMetadatas":[null]}`), "configdrive.userMetadatas", "configdrive metadata has an empty key"},
		{"metadata key long", reinstallBody(`,"configDriveMetadata":{"`+strings.Repeat("k", 256)+`":"v"}`, ""), "customizations.configDriveMetadata", `configdrive metadata key "` + strings.Repeat("k", 64) + `"... is longer than 255 bytes`},
		{"metadata value long", reinstallBody(`,"configDriveMetadata":{"big":"`+strings.Repeat("v", 64<<10+1)+`"}`, ""), "customizations.configDriveMetadata", `configdrive metadata value of key "big" is longer than 64 KiB`},
		{"metadata too many", legacyBody(`,"configdrive":{"userMetadatas":[` + strings.Join(manyMeta, ",") + `]}`), "configdrive.userMetadatas", "configdrive metadata has 129 keys, more than the limit of 128"},
		{"metadata duplicate", legacyBody(`,"configdrive":{"userMetadatas":[{"key":"a","value":"1"},{"key":"a","value":"2"}]}`), "configdrive.userMetadatas[1].key", `configdrive userMetadatas: key "a" is given more than once`},
		{"user data too big", legacyBody(`,"configdrive":{"userData":"` + strings.Repeat("u", 16<<20+1) + `"}`), "configdrive.userData", "configdrive userData is 16777217 bytes, more than the 16 MiB limit"},
		// Shapes.
		{"os other", `{"operatingSystem":"debian12_64"}`, "operatingSystem", `operatingSystem "debian12_64" is not supported: byoi installs only "byoi_64" or "byolinux_64" (bring your own image)`},
		{"os null", `{"operatingSystem":null,"customizations":{"imageURL":"https://h/i","imageType":"raw"}}`, "operatingSystem", `operatingSystem "" is not supported: byoi installs only "byoi_64" or "byolinux_64" (bring your own image)`},
		{"reinstall no customizations", `{"operatingSystem":"byoi_64"}`, "customizations.imageURL", "image URL is missing"},
		{"typo checksum", legacyBody(`,"checksum":"` + sha + `","checkSumType":"sha256"`), "checksum", `unknown field "checksum"`},
		{"typo url", `{"url":"https://h/i","type":"raw"}`, "url", `unknown field "url"`},
		{"unknown top", legacyBody(`,"os":"x"`), "os", `unknown field "os"`},
		{"unknown configdrive", legacyBody(`,"configdrive":{"enabled":true}`), "configdrive.enabled", `unknown field "configdrive.enabled"`},
		{"unknown header entry", legacyBody(`,"httpHeader":[{"name":"A","value":"b"}]`), "httpHeader[0].name", `unknown field "httpHeader[0].name"`},
		{"unknown metadata entry", legacyBody(`,"configdrive":{"userMetadatas":[{"key":"a","val":"b"}]}`), "configdrive.userMetadatas[0].val", `unknown field "configdrive.userMetadatas[0].val"`},
		{"unknown customizations", reinstallBody(`,"imageUrl":"https://h/j"`, ""), "customizations.imageUrl", `unknown field "customizations.imageUrl"`},
		{"unknown storage", reinstallBody("", `,"storage":[{"diskGroupId":1,"raid":[]}]`), "storage[0].raid", `unknown field "storage[0].raid"`},
		{"legacy field in reinstall", reinstallBody("", `,"URL":"https://h/i"`), "URL", `unknown field "URL"`},
		{"reinstall field in legacy", legacyBody(`,"customizations":{}`), "customizations", `unknown field "customizations"`},
		{"duplicate field", `{"URL":"https://h/i","type":"raw","type":"qcow2"}`, "type", `field "type" is given more than once`},
		{"wrong kind string", `{"URL":["https://h/i"],"type":"raw"}`, "URL", `field "URL" must be a string or null`},
		{"wrong kind bool", legacyBody(`,"configdrive":{"enable":"yes"}`), "configdrive.enable", `field "configdrive.enable" must be true or false or null`},
		{"wrong kind object", legacyBody(`,"configdrive":[]`), "configdrive", `field "configdrive" must be an object or null`},
		{"wrong kind array", legacyBody(`,"httpHeader":{"A":"b"}`), "httpHeader", `field "httpHeader" must be an array or null`},
		{"wrong kind map value", reinstallBody(`,"httpHeaders":{"X-Token":12345}`, ""), "customizations.httpHeaders.X-Token", `field "customizations.httpHeaders.X-Token" must be a string or null`},
		// Syntax and framing.
		{"trailing object", legacyBody("") + `{}`, "", "trailing data after the job's JSON object"},
		{"trailing garbage", legacyBody("") + ` x`, "", "trailing data after the job's JSON object"},
		{"trailing bracket", legacyBody("") + `]`, "", "trailing data after the job's JSON object"},
		{"trailing ws ok?", legacyBody("") + " \n\t", "", ""},
		{"array", `[]`, "", "job must be a JSON object"},
		{"null", `null`, "", "job must be a JSON object"},
		{"string", `"x"`, "", "job must be a JSON object"},
		{"empty", ``, "", "job is not valid JSON (unexpected end of input)"},
		{"truncated", `{"URL":"https://h/i","ty`, "", "job is not valid JSON (unexpected end of input)"},
		{"syntax in secret", `{"URL":"https://h/i","type":"raw","httpHeader":[{"key":"A","value":"` + secret + `"x}]}`, "", "job is not valid JSON (syntax error at byte 81)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := Parse([]byte(tt.in))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %#v", *j)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %T %v is not a *ValidationError", err, err)
			}
			if tt.want != err.Error() {
				t.Errorf("error\n got %q\nwant %q", err.Error(), tt.want)
			}
			if ve.Field != tt.field {
				t.Errorf("Field = %q, want %q", ve.Field, tt.field)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "12345") {
				t.Errorf("error leaks a secret: %q", err)
			}
		})
	}
}

func TestParseJobSizeLimit(t *testing.T) {
	_, err := Parse(make([]byte, MaxJobSize+1))
	if err == nil || err.Error() != "job is 50331649 bytes, more than the 48 MiB limit" {
		t.Fatalf("got %v", err)
	}
}

func TestValidateInCode(t *testing.T) {
	ok := func() *Job {
		return &Job{ImageURL: "https://h/i", ImageType: "raw", DiskGroupID: 1}
	}
	var nilJob *Job
	if err := nilJob.Validate(); err == nil {
		t.Error("nil job accepted")
	}
	if err := ok().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		mod   func(*Job)
		field string
		want  string
	}{
		{"disk group 0 before Normalize", func(j *Job) { j.DiskGroupID = 0 }, "DiskGroupID", "diskGroupId must be a positive disk group number (0 or absent means the default group 1), got 0"},
		{"upper hex before Normalize", func(j *Job) { j.Checksum, j.ChecksumType = strings.Repeat("A", 32), "md5" }, "Checksum", "checkSum must be 32 hexadecimal digits for md5"},
		{"config drive total", func(j *Job) {
			j.ConfigDrive = &ConfigDrive{UserData: make([]byte, 20<<20), Metadata: map[string]string{"a": strings.Repeat("x", 13<<20)}}
		}, "ConfigDrive", "configdrive content is 34603009 bytes, more than the 32 MiB limit"},
		{"user data", func(j *Job) { j.ConfigDrive = &ConfigDrive{UserData: make([]byte, 17<<20)} }, "ConfigDrive.UserData", "configdrive userData is 17825792 bytes, more than the 16 MiB limit"},
		{"dsmode any case", func(j *Job) { j.ConfigDrive = &ConfigDrive{Metadata: map[string]string{"DSMode": "local"}} }, "ConfigDrive.Metadata", `configdrive metadata key "DSMode" is not allowed: it changes how cloud-init uses the ConfigDrive`},
		{"efi control", func(j *Job) { j.EFIBootloaderPath = "\\efi\n" }, "EFIBootloaderPath", "efiBootloaderPath contains a control character"},
		{"description", func(j *Job) { j.Description = strings.Repeat("d", 4097) }, "Description", "description is 4097 bytes, more than the 4096-byte limit"},
		{"too many headers", func(j *Job) {
			for i := 0; i < 65; i++ {
				j.Headers = append(j.Headers, Header{Name: fmt.Sprintf("X-%d", i)})
			}
		}, "Headers", "65 HTTP headers given, at most 64 are accepted"},
	} {
		j := ok()
		tt.mod(j)
		err := j.Validate()
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Message != tt.want || ve.Field != tt.field {
			t.Errorf("%s: got %#v (%v), want field %q message %q", tt.name, ve, err, tt.field, tt.want)
		}
	}
	j := ok()
	j.DiskGroupID = 0
	j.Checksum, j.ChecksumType = strings.Repeat("A", 32), "md5"
	j.Normalize()
	if err := j.Validate(); err != nil {
		t.Errorf("after Normalize: %v", err)
	}
}

// TestSecretsStayOut checks that header values, user data, metadata values
// and URL credentials never reach String, %v/%+v/%#v, slog output or errors.
func TestSecretsStayOut(t *testing.T) {
	body := `{"URL":"https://user:` + secret + `@images.example.com/i.qcow2?sig=` + secret + `#` + secret + `","type":"qcow2",` +
		`"httpHeader":[{"key":"Authorization","value":"Bearer ` + secret + `"},{"key":"X-Api-Key","value":"` + secret + `"}],` +
		`"configdrive":{"hostname":"web1","sshKey":"` + keyEd25519 + `","userData":"#cloud-config\npassword: ` + secret + `",` +
		`"userMetadatas":[{"key":"token","value":"` + secret + `"}]}}`
	j := mustParse(t, body)

	var buf bytes.Buffer
	text := slog.New(slog.NewTextHandler(&buf, nil))
	text.Info("job", "job", j)
	jsonLog := slog.New(slog.NewJSONHandler(&buf, nil))
	jsonLog.Info("job", "job", j, "configdrive", j.ConfigDrive)
	text.Info("value", "job", *j, "headers", j.Headers)
	outputs := []string{
		buf.String(),
		j.String(), fmt.Sprint(j), fmt.Sprintf("%v %+v %#v %s", j, j, j, j),
		fmt.Sprintf("%v %+v %#v", *j, *j, *j),
		fmt.Sprintf("%v %+v %#v", j.ConfigDrive, *j.ConfigDrive, *j.ConfigDrive),
	}
	for _, out := range outputs {
		if strings.Contains(out, secret) || strings.Contains(out, "cloud-config") {
			t.Errorf("secret in output: %s", out)
		}
	}
	log := buf.String()
	for _, want := range []string{
		"https://images.example.com/i.qcow2?<redacted>", "Authorization,X-Api-Key",
		"hostname=web1", "userDataBytes", "metadataKeys=1", "sshKeys=1", `"diskGroupId":1`, "checksumType", "type=qcow2",
	} {
		if want == "checksumType" {
			if strings.Contains(log, want) {
				t.Errorf("log shows an absent checksum type: %s", log)
			}
			continue
		}
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q: %s", want, log)
		}
	}
	t.Logf("text log: %s", strings.SplitN(log, "\n", 2)[0])
	t.Logf("String: %s", j)

	// Errors about a bad URL do not echo it.
	for _, u := range []string{"ftp://u:" + secret + "@h/", "http://[" + secret, "https:///?" + secret} {
		_, err := Parse([]byte(`{"URL":"` + u + `","type":"raw"}`))
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("URL %q: %v", u, err)
		}
	}
}

func TestParseHeaderFlag(t *testing.T) {
	for _, tt := range []struct {
		in, name, value string
	}{
		{"Authorization: Bearer abc", "Authorization", "Bearer abc"},
		{"X-Token:abc", "X-Token", "abc"},
		{"X-Token:  a: b \t", "X-Token", "a: b"},
		{"X-Empty:", "X-Empty", ""},
		{"X-Tab:\tv\tw", "X-Tab", "v\tw"},
	} {
		h, err := ParseHeaderFlag(tt.in)
		if err != nil || h.Name != tt.name || h.Value != tt.value {
			t.Errorf("ParseHeaderFlag(%q) = %q %q %v, want %q %q", tt.in, h.Name, h.Value, err, tt.name, tt.value)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"Bearer " + secret, `--header must be "Name: value" (no colon found)`},
		{"", `--header must be "Name: value" (no colon found)`},
		{": " + secret, "--header: the text before the first colon is not a valid HTTP header name"},
		{"Authorization Bearer " + secret + ": x", "--header: the text before the first colon is not a valid HTTP header name"},
		{"X-A : " + secret, "--header: the text before the first colon is not a valid HTTP header name"},
		{"X-A: " + secret + "\r\nX-B: 1", `HTTP header "X-A": the value contains a line break or another control character`},
		{"X-A: " + secret + "\x00", `HTTP header "X-A": the value contains a line break or another control character`},
		{"X-A: " + strings.Repeat(secret, 1000), `HTTP header "X-A": the value is longer than 16 KiB`},
	} {
		_, err := ParseHeaderFlag(tt.in)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("ParseHeaderFlag(%.30q) = %v, want %q", tt.in, err, tt.want)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks the value: %v", err)
		}
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("%T is not a *ValidationError", err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"job-legacy.json", "job-reinstall.json", "job-legacy-minimal.json", "job-reinstall-minimal.json"} {
		f.Add(readFixture(f, name))
	}
	for _, s := range []string{
		legacyBody(`,"checksum":"x"`),
		legacyBody(`,"configdrive":{"enable":true,"userMetadatas":[{"key":"a","value":"b"},null]}`),
		legacyBody(`,"httpHeader":[{"key":"A","value":"b\r\n"}],"diskGroupId":-1`),
		reinstallBody(`,"httpHeaders":{"A":"1","a":"2"},"configDriveMetadata":{"dsmode":"x"}`, `,"storage":[{}]`),
		reinstallBody(`,"sshKey":"`+keyEd25519+`\n`+keySKECDSA+`"`, `,"storage":[{"diskGroupId":1e3}]`),
		`{"operatingSystem":"byoi_64","customizations":null,"storage":[null]}`,
		legacyBody("") + "{}",
		`{"URL":"https://h/i","type":"raw","type":"raw"}`,
		`[{"URL":1}]`, `{"a":{"b":{"c":[[[[[[]]]]]]}}}`, `{`, `nul`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := Parse(data)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %T is not a *ValidationError: %v", err, err)
			}
			if ve.Message == "" {
				t.Fatal("empty message")
			}
			return
		}
		if err := j.Validate(); err != nil {
			t.Fatalf("accepted job does not re-validate: %v", err)
		}
		before := fmt.Sprintf("%#v|%v|%q|%v", *j, j.Headers, headerValues(j), configDriveData(j))
		j.Normalize()
		if after := fmt.Sprintf("%#v|%v|%q|%v", *j, j.Headers, headerValues(j), configDriveData(j)); after != before {
			t.Fatalf("Normalize not idempotent:\n%s\n%s", before, after)
		}
		// The summary never shows a header value that is long enough to
		// be recognised and appears nowhere else in the visible fields.
		sum := j.String()
		visible := j.ImageURL + j.ImageType + j.Checksum + j.EFIBootloaderPath
		for _, h := range j.Headers {
			visible += h.Name
		}
		if j.ConfigDrive != nil {
			visible += j.ConfigDrive.Hostname
		}
		for _, v := range headerValues(j) {
			if len(v) >= 8 && strings.Contains(sum, v) && !strings.Contains(visible, v) && !strings.Contains("Job{url= type= headers= diskGroupId= configdrive=", v) {
				t.Fatalf("header value %q shown in %s", v, sum)
			}
		}
		if _, err := json.Marshal(j.LogValue().Resolve().String()); err != nil {
			t.Fatal(err)
		}
	})
}

func headerValues(j *Job) []string {
	var vs []string
	for _, h := range j.Headers {
		vs = append(vs, h.Value)
	}
	return vs
}

func configDriveData(j *Job) string {
	if j.ConfigDrive == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%q %q %q %v", j.ConfigDrive.Hostname, j.ConfigDrive.SSHKey, j.ConfigDrive.UserData, j.ConfigDrive.Metadata)
}

// TestImageChecksOption: byoi's imageChecks extension in both shapes
// (issue 26), and its field named in the error.
func TestImageChecksOption(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`{"URL":"https://h/i","type":"raw","imageChecks":"strict"}`, ImageChecksStrict},
		{`{"URL":"https://h/i","type":"raw","imageChecks":"off"}`, ImageChecksOff},
		{`{"URL":"https://h/i","type":"raw"}`, ""},
		{`{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","imageChecks":"strict"}}`, ImageChecksStrict},
	} {
		j, err := Parse([]byte(tc.body))
		if err != nil || j.ImageChecks != tc.want {
			t.Fatalf("%s: %v, %+v", tc.body, err, j)
		}
	}
	_, err := Parse([]byte(`{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","imageChecks":"Strict"}}`))
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Code != ImageChecksValue || ve.Field != "customizations.imageChecks" {
		t.Fatalf("err %v", err)
	}
}

// TestNetworkDataOption: byoi's networkData extension (issue 26) in both
// shapes: absent (network_data.json on) or "off"; any other value is
// refused with its field named as the user wrote it.
func TestNetworkDataOption(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`{"URL":"https://h/i","type":"raw","networkData":"off"}`, NetworkDataOff},
		{`{"URL":"https://h/i","type":"raw"}`, ""},
		{`{"URL":"https://h/i","type":"raw","networkData":""}`, ""},
		{`{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","networkData":"off"}}`, NetworkDataOff},
		{`{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw"}}`, ""},
	} {
		j, err := Parse([]byte(tc.body))
		if err != nil || j.NetworkData != tc.want {
			t.Fatalf("%s: %v, %+v", tc.body, err, j)
		}
		if c := j.Clone(); c.NetworkData != tc.want {
			t.Errorf("%s: Clone lost networkData: %q", tc.body, c.NetworkData)
		}
	}
	for _, tc := range []struct{ body, field string }{
		{`{"URL":"https://h/i","type":"raw","networkData":"Off"}`, "networkData"},
		{`{"URL":"https://h/i","type":"raw","networkData":"on"}`, "networkData"},
		{`{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://h/i","imageType":"raw","networkData":"dhcp"}}`, "customizations.networkData"},
	} {
		_, err := Parse([]byte(tc.body))
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Code != NetworkDataValue || ve.Field != tc.field {
			t.Errorf("%s: err %v, want NetworkDataValue on %s", tc.body, err, tc.field)
		}
	}
	_, err := Parse([]byte(`{"URL":"https://h/i","type":"raw","networkData":false}`))
	if err == nil {
		t.Errorf("networkData false accepted")
	}
}
