// Package agent runs a deployment job: spec parsing and normalising, the
// pipeline of steps, status reporting, reboot.
package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/byoi/byoi/imaging"
)

// Image types accepted in a job (OVH's enum, lower-case only).
const (
	ImageTypeQcow2 = "qcow2"
	ImageTypeRaw   = "raw"
)

// Limits on a job spec. MaxJobSize leaves room for a ConfigDrive at its
// limits (16 MiB user data plus 128 metadata values of 64 KiB) with some
// JSON escaping overhead.
const (
	MaxJobSize          = 48 << 20
	MaxUserDataSize     = 16 << 20
	MaxConfigDriveSize  = 32 << 20
	MaxMetadataKeys     = 128
	MaxMetadataKeyLen   = 255
	MaxMetadataValueLen = 64 << 10

	maxURLLen          = 16 << 10
	maxHeaders         = 64
	maxHeaderValueLen  = 16 << 10
	maxDescriptionLen  = 4 << 10
	maxEFIPathLen      = 1 << 10
	maxHostnameLen     = 253 // RFC 1035 2.3.4 / RFC 1123: 255 octets on the wire
	maxHostnameLabel   = 63  // RFC 1035 2.3.1
	reinstallOSByoi    = "byoi_64"
	dsmodeMetadataKey  = "dsmode"
	defaultDiskGroupID = 1
)

// The messages OVH returns for these cases, kept word for word because users
// and their scripts know them (reference/API.md, guide 2026).
const (
	msgBadImageType    = "Bad format image, expected : qcow2, raw."
	msgChecksumPair    = "Please provide checkSum AND checkSumType or none of them"
	msgBadChecksumType = "Bad checkSumType, expected : md5, sha1, sha256, sha512."
)

// checksumHexLen is the hex digest length of each accepted checksum type.
var checksumHexLen = map[string]int{"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}

// Job is one deployment, normalised from either OVH request shape. A Job
// that passed Validate is canonical: lower-case checksum, DiskGroupID >= 1,
// SSH keys one canonical line each.
//
// Header values and ConfigDrive user data are secrets: String, GoString and
// LogValue leave them out.
type Job struct {
	ImageURL     string
	ImageType    string // "qcow2" or "raw"
	Checksum     string // lower-case hex, "" = none
	ChecksumType string // md5 sha1 sha256 sha512, "" = none
	// Headers are sent with the image download. Legacy shape: the order
	// given; reinstall shape (a JSON map): sorted by name.
	Headers           []imaging.Header
	DiskGroupID       int // >= 1; 0 or absent in the input becomes 1
	Description       string
	EFIBootloaderPath string
	ConfigDrive       *ConfigDrive // nil when no ConfigDrive field is set
}

// ConfigDrive is what goes into the config-2 partition for cloud-init.
type ConfigDrive struct {
	Hostname string
	// SSHKey holds one or more OpenSSH public key lines separated by "\n"
	// (see ParseSSHPublicKeys); SSHKeys splits them.
	SSHKey   string
	UserData []byte            // secret
	Metadata map[string]string // meta_data.json "meta"; nil when empty
}

// ValidationError is a job spec refused before anything is done. Message is
// the user-facing text (OVH's own words where OVH has them) and never holds
// a header value, user data or metadata value. Field names what was wrong:
// after ParseJob, the JSON path in the input ("checkSum",
// "customizations.imageType", "configdrive.enabled"); from Validate on a Job
// built in code, the Job field ("Checksum", "ConfigDrive.Hostname").
type ValidationError struct {
	Field   string
	Message string
}

// Error returns the user-facing message.
func (e *ValidationError) Error() string { return e.Message }

func invalid(field, format string, args ...any) *ValidationError {
	return &ValidationError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// legacyJob is the body of the legacy
// POST /dedicated/server/{serviceName}/bringYourOwnImage (reference/API.md).
// Struct tags are matched exactly (case-sensitive) by checkFields.
type legacyJob struct {
	URL          string             `json:"URL"`
	Type         string             `json:"type"`
	CheckSum     string             `json:"checkSum"`
	CheckSumType string             `json:"checkSumType"`
	ConfigDrive  *legacyConfigDrive `json:"configdrive"`
	Description  string             `json:"description"`
	DiskGroupID  int                `json:"diskGroupId"`
	HTTPHeader   []keyValue         `json:"httpHeader"`
}

type legacyConfigDrive struct {
	Enable        bool       `json:"enable"`
	Hostname      string     `json:"hostname"`
	SSHKey        string     `json:"sshKey"`
	UserData      string     `json:"userData"`
	UserMetadatas []keyValue `json:"userMetadatas"`
}

type keyValue struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// reinstallJob is the body of POST /dedicated/server/{serviceName}/reinstall
// with operatingSystem "byoi_64".
type reinstallJob struct {
	OperatingSystem string                   `json:"operatingSystem"`
	Customizations  *reinstallCustomizations `json:"customizations"`
	Storage         []reinstallStorage       `json:"storage"`
}

type reinstallCustomizations struct {
	ImageURL            string            `json:"imageURL"`
	ImageType           string            `json:"imageType"`
	ImageCheckSum       string            `json:"imageCheckSum"`
	ImageCheckSumType   string            `json:"imageCheckSumType"`
	EFIBootloaderPath   string            `json:"efiBootloaderPath"`
	Hostname            string            `json:"hostname"`
	SSHKey              string            `json:"sshKey"`
	ConfigDriveUserData string            `json:"configDriveUserData"`
	ConfigDriveMetadata map[string]string `json:"configDriveMetadata"`
	HTTPHeaders         map[string]string `json:"httpHeaders"`
}

type reinstallStorage struct {
	DiskGroupID int `json:"diskGroupId"`
}

// legacyFields and reinstallFields map Job field names (as used by
// Validate) to the JSON path in each shape, so that ParseJob's errors name
// what the user wrote.
var (
	legacyFields = map[string]string{
		"ImageURL": "URL", "ImageType": "type", "Checksum": "checkSum",
		"ChecksumType": "checkSumType", "Headers": "httpHeader",
		"DiskGroupID": "diskGroupId", "Description": "description",
		"ConfigDrive":          "configdrive",
		"ConfigDrive.Hostname": "configdrive.hostname",
		"ConfigDrive.SSHKey":   "configdrive.sshKey",
		"ConfigDrive.UserData": "configdrive.userData",
		"ConfigDrive.Metadata": "configdrive.userMetadatas",
	}
	reinstallFields = map[string]string{
		"ImageURL": "customizations.imageURL", "ImageType": "customizations.imageType",
		"Checksum": "customizations.imageCheckSum", "ChecksumType": "customizations.imageCheckSumType",
		"Headers": "customizations.httpHeaders", "DiskGroupID": "storage.diskGroupId",
		"EFIBootloaderPath":    "customizations.efiBootloaderPath",
		"ConfigDrive":          "customizations",
		"ConfigDrive.Hostname": "customizations.hostname",
		"ConfigDrive.SSHKey":   "customizations.sshKey",
		"ConfigDrive.UserData": "customizations.configDriveUserData",
		"ConfigDrive.Metadata": "customizations.configDriveMetadata",
	}
)

// ParseJob parses a job spec in either OVH shape, normalises it and
// validates it. The shape is the reinstall body when the top-level object
// has an "operatingSystem" field, the legacy BYOI body otherwise. Field names
// are matched exactly (OVH's API is case-sensitive, and a near miss such as
// "checksum" for "checkSum" must not be silently dropped or accepted);
// unknown or repeated fields, trailing data after the object and inputs over
// MaxJobSize are refused. Every field may be null. All errors are
// *ValidationError.
func ParseJob(data []byte) (*Job, error) {
	if len(data) > MaxJobSize {
		return nil, invalid("", "job is %d bytes, more than the %d MiB limit", len(data), MaxJobSize>>20)
	}
	reinstall, err := isReinstall(data)
	if err != nil {
		return nil, err
	}
	var (
		job    *Job
		fields map[string]string
	)
	if reinstall {
		var body reinstallJob
		if err := decodeStrict(data, &body); err != nil {
			return nil, err
		}
		j, err := body.job()
		if err != nil {
			return nil, err
		}
		job, fields = j, reinstallFields
	} else {
		var body legacyJob
		if err := decodeStrict(data, &body); err != nil {
			return nil, err
		}
		j, err := body.job()
		if err != nil {
			return nil, err
		}
		job, fields = j, legacyFields
	}
	job.Normalize()
	if err := job.Validate(); err != nil {
		var ve *ValidationError
		if errors.As(err, &ve) {
			if f, ok := fields[ve.Field]; ok {
				ve.Field = f
			}
		}
		return nil, err
	}
	return job, nil
}

func (b *legacyJob) job() (*Job, error) {
	j := &Job{
		ImageURL:     b.URL,
		ImageType:    b.Type,
		Checksum:     b.CheckSum,
		ChecksumType: b.CheckSumType,
		DiskGroupID:  b.DiskGroupID,
		Description:  b.Description,
	}
	for _, h := range b.HTTPHeader {
		j.Headers = append(j.Headers, imaging.Header{Name: h.Key, Value: h.Value})
	}
	if c := b.ConfigDrive; c != nil {
		// A ConfigDrive is built when enable is true or when any content
		// field is set, even with enable false or absent: a user who filled
		// in a hostname, key, user data or metadata wants them applied, and
		// silently dropping them would leave a server they cannot log into.
		if c.Enable || c.Hostname != "" || c.SSHKey != "" || c.UserData != "" || len(c.UserMetadatas) > 0 {
			cd := &ConfigDrive{Hostname: c.Hostname, SSHKey: c.SSHKey}
			if c.UserData != "" {
				cd.UserData = []byte(c.UserData)
			}
			for i, kv := range c.UserMetadatas {
				if cd.Metadata == nil {
					cd.Metadata = make(map[string]string, len(c.UserMetadatas))
				}
				if _, dup := cd.Metadata[kv.Key]; dup {
					return nil, invalid(fmt.Sprintf("configdrive.userMetadatas[%d].key", i), "configdrive userMetadatas: key %s is given more than once", quoteShort(kv.Key))
				}
				cd.Metadata[kv.Key] = kv.Value
			}
			j.ConfigDrive = cd
		}
	}
	return j, nil
}

func (b *reinstallJob) job() (*Job, error) {
	if b.OperatingSystem != reinstallOSByoi {
		return nil, invalid("operatingSystem", "operatingSystem %s is not supported: byoi installs only %q (bring your own image)", quoteShort(b.OperatingSystem), reinstallOSByoi)
	}
	j := &Job{}
	switch len(b.Storage) {
	case 0:
	case 1:
		j.DiskGroupID = b.Storage[0].DiskGroupID
	default:
		return nil, invalid("storage", "storage has %d entries: a BYOI image is written to a single disk group, give one", len(b.Storage))
	}
	c := b.Customizations
	if c == nil {
		return j, nil // Validate reports the missing URL and type
	}
	j.ImageURL = c.ImageURL
	j.ImageType = c.ImageType
	j.Checksum = c.ImageCheckSum
	j.ChecksumType = c.ImageCheckSumType
	j.EFIBootloaderPath = c.EFIBootloaderPath
	names := make([]string, 0, len(c.HTTPHeaders))
	for name := range c.HTTPHeaders {
		names = append(names, name)
	}
	sort.Strings(names) // a JSON object has no order: make the Job deterministic
	for _, name := range names {
		j.Headers = append(j.Headers, imaging.Header{Name: name, Value: c.HTTPHeaders[name]})
	}
	if c.Hostname != "" || c.SSHKey != "" || c.ConfigDriveUserData != "" || len(c.ConfigDriveMetadata) > 0 {
		cd := &ConfigDrive{Hostname: c.Hostname, SSHKey: c.SSHKey}
		if c.ConfigDriveUserData != "" {
			cd.UserData = []byte(c.ConfigDriveUserData)
		}
		if len(c.ConfigDriveMetadata) > 0 {
			cd.Metadata = c.ConfigDriveMetadata
		}
		j.ConfigDrive = cd
	}
	return j, nil
}

// isReinstall reports whether the top-level object has an
// "operatingSystem" member, the mark of the reinstall shape. It reads the
// top level only, without keeping the values.
func isReinstall(data []byte) (bool, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return false, jsonSyntaxError(err, dec)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return false, invalid("", "job must be a JSON object")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false, jsonSyntaxError(err, dec)
		}
		if tok == "operatingSystem" {
			return true, nil
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return false, jsonSyntaxError(err, dec)
		}
	}
	return false, nil
}

// decodeStrict checks data against v's shape with checkJSON (exact field
// names, no duplicates, JSON kinds, no trailing data) and then decodes it
// with DisallowUnknownFields.
func decodeStrict(data []byte, v any) error {
	if err := checkJSON(data, reflect.TypeOf(v).Elem()); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// checkJSON accepted the document, so this should not happen. The
		// decoder's message may quote input (a number), so it is not shown.
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return invalid(te.Field, "field %q has the wrong type", te.Field)
		}
		return invalid("", "job does not match the expected shape")
	}
	return nil
}

// checkJSON walks the JSON document in data against the Go type t, matching
// object keys to `json` tags exactly. encoding/json matches field names
// case-insensitively, so DisallowUnknownFields alone would take "checksum"
// for "checkSum" and keep the last of repeated keys; this walk refuses both
// and names the field. The walk follows t, so its depth is bounded by t.
func checkJSON(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return jsonSyntaxError(err, dec)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return invalid("", "job must be a JSON object")
	}
	if err := checkObject(dec, t, ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid("", "trailing data after the job's JSON object")
	}
	return nil
}

// checkValue checks one value whose first token is still to be read.
func checkValue(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return jsonSyntaxError(err, dec)
	}
	if tok == nil {
		return nil // every field is nullable
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		if _, ok := tok.(string); !ok {
			return kindError(path, "a string")
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return kindError(path, "true or false")
		}
	case reflect.Int:
		n, ok := tok.(json.Number)
		if !ok {
			return kindError(path, "an integer")
		}
		if _, err := strconv.ParseInt(string(n), 10, 32); err != nil {
			return kindError(path, "an integer")
		}
	case reflect.Slice:
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return kindError(path, "an array")
		}
		for i := 0; dec.More(); i++ {
			if err := checkValue(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil { // ']'
			return jsonSyntaxError(err, dec)
		}
	case reflect.Struct, reflect.Map:
		if d, ok := tok.(json.Delim); !ok || d != '{' {
			return kindError(path, "an object")
		}
		return checkObject(dec, t, path)
	default:
		return invalid(path, "field %q has an unsupported type", path)
	}
	return nil
}

// checkObject checks the members of an object whose '{' was read.
func checkObject(dec *json.Decoder, t reflect.Type, path string) error {
	var fields map[string]reflect.Type
	if t.Kind() == reflect.Struct {
		fields = make(map[string]reflect.Type, t.NumField())
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			fields[name] = f.Type
		}
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return jsonSyntaxError(err, dec)
		}
		key, _ := tok.(string)
		p := key
		if path != "" {
			p = path + "." + key
		}
		if seen[key] {
			return invalid(p, "field %s is given more than once", quoteShort(p))
		}
		seen[key] = true
		var ft reflect.Type
		switch {
		case fields != nil:
			var ok bool
			if ft, ok = fields[key]; !ok {
				return invalid(p, "unknown field %s", quoteShort(p))
			}
		default: // map[string]string
			ft = t.Elem()
		}
		if err := checkValue(dec, ft, p); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return jsonSyntaxError(err, dec)
	}
	return nil
}

func kindError(path, want string) error {
	return invalid(path, "field %q must be %s or null", path, want)
}

// jsonSyntaxError reports where the JSON is broken without quoting it: the
// decoder's own message quotes the offending character, which may be part
// of a secret.
func jsonSyntaxError(err error, dec *json.Decoder) error {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return invalid("", "job is not valid JSON (syntax error at byte %d)", se.Offset)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("", "job is not valid JSON (unexpected end of input)")
	default:
		return invalid("", "job is not valid JSON (at byte %d)", dec.InputOffset())
	}
}

// Normalize puts a Job built from user input in canonical form: a 0
// DiskGroupID becomes the default group 1, the checksum becomes lower-case,
// and SSH keys that parse are rewritten one canonical line each. ParseJob
// calls it; code building a Job from flags should call it before Validate.
// It does not change what Validate will refuse, except for these forms.
func (j *Job) Normalize() {
	if j == nil {
		return
	}
	if j.DiskGroupID == 0 {
		j.DiskGroupID = defaultDiskGroupID
	}
	j.Checksum = strings.ToLower(j.Checksum)
	if cd := j.ConfigDrive; cd != nil && cd.SSHKey != "" {
		if keys, err := ParseSSHPublicKeys(cd.SSHKey); err == nil {
			lines := make([]string, len(keys))
			for i, k := range keys {
				lines[i] = k.String()
			}
			cd.SSHKey = strings.Join(lines, "\n")
		}
	}
}

// Validate checks a Job. Type and checksum type are accepted in lower case
// only, as in OVH's enum. Errors are *ValidationError with Field set to the
// Job field; they never contain header values or user data.
func (j *Job) Validate() error {
	if j == nil {
		return invalid("", "no job")
	}
	if err := validateURL(j.ImageURL); err != nil {
		return err
	}
	if j.ImageType != ImageTypeQcow2 && j.ImageType != ImageTypeRaw {
		return invalid("ImageType", msgBadImageType)
	}
	if (j.Checksum == "") != (j.ChecksumType == "") {
		field := "Checksum"
		if j.ChecksumType != "" {
			field = "ChecksumType"
		}
		return invalid(field, msgChecksumPair)
	}
	if j.ChecksumType != "" {
		n, ok := checksumHexLen[j.ChecksumType]
		if !ok {
			return invalid("ChecksumType", msgBadChecksumType)
		}
		if len(j.Checksum) != n || !isLowerHex(j.Checksum) {
			return invalid("Checksum", "checkSum must be %d hexadecimal digits for %s", n, j.ChecksumType)
		}
	}
	if j.DiskGroupID < 1 {
		return invalid("DiskGroupID", "diskGroupId must be a positive disk group number (0 or absent means the default group 1), got %d", j.DiskGroupID)
	}
	if err := validateHeaders(j.Headers); err != nil {
		return err
	}
	if len(j.Description) > maxDescriptionLen {
		return invalid("Description", "description is %d bytes, more than the %d-byte limit", len(j.Description), maxDescriptionLen)
	}
	if len(j.EFIBootloaderPath) > maxEFIPathLen {
		return invalid("EFIBootloaderPath", "efiBootloaderPath is %d bytes, more than the %d-byte limit", len(j.EFIBootloaderPath), maxEFIPathLen)
	}
	if hasControl(j.EFIBootloaderPath) {
		return invalid("EFIBootloaderPath", "efiBootloaderPath contains a control character")
	}
	if j.ConfigDrive != nil {
		return j.ConfigDrive.validate()
	}
	return nil
}

func validateURL(s string) error {
	const field = "ImageURL"
	if s == "" {
		return invalid(field, "image URL is missing")
	}
	if len(s) > maxURLLen {
		return invalid(field, "image URL is %d bytes, more than the %d KiB limit", len(s), maxURLLen>>10)
	}
	// The url.Parse error quotes the URL, which may carry credentials:
	// only say that it failed.
	u, err := url.Parse(s)
	if err != nil {
		return invalid(field, "image URL cannot be parsed as a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return invalid(field, "image URL must start with http:// or https://")
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return invalid(field, "image URL has no host name")
	}
	return nil
}

func validateHeaders(hs []imaging.Header) error {
	const field = "Headers"
	if len(hs) > maxHeaders {
		return invalid(field, "%d HTTP headers given, at most %d are accepted", len(hs), maxHeaders)
	}
	seen := make(map[string]bool, len(hs))
	for i, h := range hs {
		// An invalid name may be a mis-split "Name value" pair, so it is
		// identified by position, not quoted. A valid name is not secret.
		if !isToken(h.Name) {
			return invalid(field, "HTTP header %d: the name is not a valid HTTP header name (RFC 9110 token: letters, digits and !#$%%&'*+-.^_`|~)", i+1)
		}
		if len(h.Value) > maxHeaderValueLen {
			return invalid(field, "HTTP header %q: the value is longer than %d KiB", h.Name, maxHeaderValueLen>>10)
		}
		if !validHeaderValue(h.Value) {
			return invalid(field, "HTTP header %q: the value contains a line break or another control character", h.Name)
		}
		k := strings.ToLower(h.Name) // header names are case-insensitive
		if seen[k] {
			return invalid(field, "HTTP header %q is given more than once", h.Name)
		}
		seen[k] = true
	}
	return nil
}

func (c *ConfigDrive) validate() error {
	// The combined bound is checked first, before any per-field work. The
	// per-field limits below already keep the content under about 24.1 MiB;
	// this bound is the one promised to the ConfigDrive builder, whatever
	// those limits become.
	total := len(c.Hostname) + len(c.SSHKey) + len(c.UserData)
	for k, v := range c.Metadata {
		total += len(k) + len(v)
	}
	if total > MaxConfigDriveSize {
		return invalid("ConfigDrive", "configdrive content is %d bytes, more than the %d MiB limit", total, MaxConfigDriveSize>>20)
	}
	if c.Hostname != "" {
		if err := validateHostname(c.Hostname); err != nil {
			return err
		}
	}
	if c.SSHKey != "" {
		if _, err := ParseSSHPublicKeys(c.SSHKey); err != nil {
			return invalid("ConfigDrive.SSHKey", "%s", err.Error())
		}
	}
	if len(c.UserData) > MaxUserDataSize {
		return invalid("ConfigDrive.UserData", "configdrive userData is %d bytes, more than the %d MiB limit", len(c.UserData), MaxUserDataSize>>20)
	}
	const mfield = "ConfigDrive.Metadata"
	if len(c.Metadata) > MaxMetadataKeys {
		return invalid(mfield, "configdrive metadata has %d keys, more than the limit of %d", len(c.Metadata), MaxMetadataKeys)
	}
	keys := make([]string, 0, len(c.Metadata))
	for k := range c.Metadata {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same key every time
	for _, k := range keys {
		v := c.Metadata[k]
		switch {
		case k == "":
			return invalid(mfield, "configdrive metadata has an empty key")
		case len(k) > MaxMetadataKeyLen:
			return invalid(mfield, "configdrive metadata key %s is longer than %d bytes", quoteShort(k), MaxMetadataKeyLen)
		case strings.EqualFold(k, dsmodeMetadataKey):
			// cloud-init reads "dsmode" from the metadata to decide whether
			// the datasource runs before or after networking (or not at all).
			return invalid(mfield, "configdrive metadata key %q is not allowed: it changes how cloud-init uses the ConfigDrive", k)
		case len(v) > MaxMetadataValueLen:
			return invalid(mfield, "configdrive metadata value of key %s is longer than %d KiB", quoteShort(k), MaxMetadataValueLen>>10)
		}
	}
	return nil
}

// validateHostname applies RFC 1035 2.3.1 to every dot-separated label: 1
// to 63 characters, letters, digits and hyphens, starting with a letter and
// ending with a letter or digit; the whole name is at most 253 characters.
// A fully qualified name is accepted when every label obeys; a trailing dot
// is not.
func validateHostname(h string) error {
	const field = "ConfigDrive.Hostname"
	if len(h) > maxHostnameLen {
		return invalid(field, "hostname is %d characters, more than %d", len(h), maxHostnameLen)
	}
	for _, label := range strings.Split(h, ".") {
		switch {
		case label == "":
			return invalid(field, "hostname %s has an empty label (RFC 1035: labels between dots are 1 to 63 characters)", quoteShort(h))
		case len(label) > maxHostnameLabel:
			return invalid(field, "hostname label %s is longer than 63 characters (RFC 1035)", quoteShort(label))
		case !isLetter(label[0]):
			return invalid(field, "hostname label %s must start with a letter (RFC 1035)", quoteShort(label))
		case !isLetter(label[len(label)-1]) && !isDigit(label[len(label)-1]):
			return invalid(field, "hostname label %s must end with a letter or digit (RFC 1035)", quoteShort(label))
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isLetter(c) && !isDigit(c) && c != '-' {
				return invalid(field, "hostname label %s may contain only letters, digits and hyphens (RFC 1035)", quoteShort(label))
			}
		}
	}
	return nil
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isDigit(c) && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// isToken reports whether s is an RFC 9110 5.6.2 token (a header name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isLetter(c) || isDigit(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// validHeaderValue refuses CR, LF, NUL and the other control characters
// except horizontal tab (RFC 9110 5.5), as net/http would at request time.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

// ParseHeaderFlag parses a --header command-line argument, "Name: value"
// (as curl takes it). Spaces and tabs around the value are dropped; the
// value may be empty. The error never contains the value, nor the argument
// when it has no colon (it may be a bare secret).
func ParseHeaderFlag(s string) (imaging.Header, error) {
	name, value, ok := strings.Cut(s, ":")
	if !ok {
		return imaging.Header{}, invalid("header", `--header must be "Name: value" (no colon found)`)
	}
	if !isToken(name) {
		return imaging.Header{}, invalid("header", "--header: the text before the first colon is not a valid HTTP header name (RFC 9110 token: letters, digits and !#$%%&'*+-.^_`|~, no spaces)")
	}
	value = strings.Trim(value, " \t")
	if len(value) > maxHeaderValueLen {
		return imaging.Header{}, invalid("header", "--header %q: the value is longer than %d KiB", name, maxHeaderValueLen>>10)
	}
	if !validHeaderValue(value) {
		return imaging.Header{}, invalid("header", "--header %q: the value contains a line break or another control character", name)
	}
	return imaging.Header{Name: name, Value: value}, nil
}

// SSHKeys returns the ConfigDrive's SSH public keys, one canonical line
// each, or nil when there are none or the field does not parse.
func (c *ConfigDrive) SSHKeys() []string {
	if c == nil || c.SSHKey == "" {
		return nil
	}
	keys, err := ParseSSHPublicKeys(c.SSHKey)
	if err != nil {
		return nil
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.String()
	}
	return out
}

// redactURL keeps scheme, host and path of an image URL for logs; user
// info and query (where pre-signed credentials live) become "redacted" and
// the fragment is dropped.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "<invalid URL>"
	}
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	if u.User != nil {
		r.User = url.User("redacted")
	}
	if u.RawQuery != "" || u.ForceQuery {
		r.RawQuery = "redacted"
	}
	return r.String()
}

// LogValue is a safe summary: the URL without user info and query, type,
// checksum type, header names only, disk group, and which ConfigDrive fields
// are present (the hostname itself is shown; user data and metadata values
// never are).
func (j *Job) LogValue() slog.Value {
	if j == nil {
		return slog.StringValue("<nil job>")
	}
	attrs := []slog.Attr{
		slog.String("url", redactURL(j.ImageURL)),
		slog.String("type", j.ImageType),
	}
	if j.ChecksumType != "" {
		attrs = append(attrs, slog.String("checksumType", j.ChecksumType))
	}
	if len(j.Headers) > 0 {
		names := make([]string, len(j.Headers))
		for i, h := range j.Headers {
			names[i] = h.Name
		}
		attrs = append(attrs, slog.String("headers", strings.Join(names, ",")))
	}
	attrs = append(attrs, slog.Int("diskGroupId", j.DiskGroupID))
	if j.EFIBootloaderPath != "" {
		attrs = append(attrs, slog.String("efiBootloaderPath", j.EFIBootloaderPath))
	}
	if cd := j.ConfigDrive; cd != nil {
		attrs = append(attrs, slog.Attr{Key: "configdrive", Value: cd.LogValue()})
	}
	return slog.GroupValue(attrs...)
}

// LogValue shows the hostname and, for the other fields, only whether they
// are present and how big they are.
func (c *ConfigDrive) LogValue() slog.Value {
	if c == nil {
		return slog.StringValue("<none>")
	}
	var attrs []slog.Attr
	if c.Hostname != "" {
		attrs = append(attrs, slog.String("hostname", c.Hostname))
	}
	if c.SSHKey != "" {
		attrs = append(attrs, slog.Int("sshKeys", strings.Count(strings.TrimSpace(c.SSHKey), "\n")+1))
	}
	if len(c.UserData) > 0 {
		attrs = append(attrs, slog.Int("userDataBytes", len(c.UserData)))
	}
	if len(c.Metadata) > 0 {
		attrs = append(attrs, slog.Int("metadataKeys", len(c.Metadata)))
	}
	if len(attrs) == 0 {
		return slog.StringValue("enabled")
	}
	return slog.GroupValue(attrs...)
}

// String and GoString have value receivers so that printing a Job or
// ConfigDrive value (not only a pointer) with %v, %+v or %#v shows the safe
// summary rather than the header values and user data.

// String is the LogValue summary as text.
func (j Job) String() string { return "Job{" + formatValue(j.LogValue()) + "}" }

// GoString is String: %#v must not dump secrets either.
func (j Job) GoString() string { return j.String() }

// String is the LogValue summary as text.
func (c ConfigDrive) String() string { return "ConfigDrive{" + formatValue(c.LogValue()) + "}" }

// GoString is String: %#v must not dump secrets either.
func (c ConfigDrive) GoString() string { return c.String() }

func formatValue(v slog.Value) string {
	if v.Kind() != slog.KindGroup {
		return v.String()
	}
	var b strings.Builder
	for i, a := range v.Group() {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a.Key)
		b.WriteByte('=')
		if a.Value.Kind() == slog.KindGroup {
			b.WriteString("{" + formatValue(a.Value) + "}")
		} else {
			b.WriteString(strconv.Quote(a.Value.String()))
		}
	}
	return b.String()
}
