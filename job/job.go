// Package job is the deployment job of byoi: both OVH request shapes (the
// legacy bringYourOwnImage body and the reinstall body with byoi_64),
// strict decoding, validation, redaction for logs, the status events of a
// deployment and the catalog of every customer-facing message. It imports
// only the standard library: the agent and the control plane both use it,
// and the control plane must not carry the disk stack.
package job

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// Image types accepted in a job (OVH's enum, lower-case only). The public
// guide lists "ova" beside OVH's API's qcow2 and raw; a raw image may also
// arrive gzip, xz, zstd or bzip2 compressed (the content decides).
const (
	ImageTypeQcow2 = "qcow2"
	ImageTypeRaw   = "raw"
	ImageTypeOVA   = "ova"
)

// ImageTypes lists the accepted image types, for forms and messages.
var ImageTypes = []string{ImageTypeQcow2, ImageTypeRaw, ImageTypeOVA}

// ImageTypeDetect is a Job's ImageType when the job gave none: OVH's
// reinstall schema does not require imageType, and the agent then detects
// the type from the image's first bytes (qcow2, OVA, raw, compressed raw).
// The legacy bringYourOwnImage body still requires its "type", as OVH's
// schema does.
const ImageTypeDetect = ""

// Operating systems of the reinstall shape that mean "bring your own
// image": byoi_64, and byolinux_64, which OVH's API also lists.
const (
	OSByoi      = "byoi_64"
	OSByoLinux  = "byolinux_64"
	defaultDisk = 1
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
	MaxHeaders          = 64
	MaxHeaderValueLen   = 16 << 10

	maxURLLen         = 16 << 10
	maxDescriptionLen = 4 << 10
	maxEFIPathLen     = 1 << 10
	maxHostnameLen    = 253 // RFC 1035 2.3.4 / RFC 1123: 255 octets on the wire
	maxHostnameLabel  = 63  // RFC 1035 2.3.1
	dsmodeMetadataKey = "dsmode"
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
	ImageType    string // "qcow2", "raw", "ova", or ImageTypeDetect ("")
	Checksum     string // lower-case hex, "" = none
	ChecksumType string // md5 sha1 sha256 sha512, "" = none
	// Headers are sent with the image download. Legacy shape: the order
	// given; reinstall shape (a JSON map): sorted by name.
	Headers           []Header
	DiskGroupID       int // >= 1; 0 or absent in the input becomes 1
	Description       string
	EFIBootloaderPath string
	ConfigDrive       *ConfigDrive // nil when no ConfigDrive field is set
	// ImageChecks is byoi's extension of the job body (issue 26): ""
	// (the default: refusals stop the deployment, warnings are
	// reported), ImageChecksStrict (warnings refuse too) or
	// ImageChecksOff (the image's system is not checked).
	ImageChecks string
	// NetworkData is byoi's extension of the job body (issue 26, network
	// on first boot): "" (the default: the ConfigDrive gets a
	// network_data.json with DHCP on the NIC the server booted from) or
	// NetworkDataOff (no network_data.json: the image configures its own
	// network).
	NetworkData string
}

// The values of Job.ImageChecks ("imageChecks" in both shapes).
const (
	ImageChecksStrict = "strict"
	ImageChecksOff    = "off"
)

// NetworkDataOff is the value of Job.NetworkData ("networkData" in both
// shapes) that leaves network_data.json out of the ConfigDrive.
const NetworkDataOff = "off"

// ConfigDrive is what goes into the config-2 partition for cloud-init.
type ConfigDrive struct {
	Hostname string
	// SSHKey holds one or more OpenSSH public key lines separated by "\n"
	// (see ParseSSHPublicKeys); SSHKeys splits them.
	SSHKey   string
	UserData []byte            // secret
	Metadata map[string]string // meta_data.json "meta"; nil when empty
}

// Clone returns a deep copy: the pipeline normalises its own copy and never
// changes the caller's Job.
func (j *Job) Clone() *Job {
	if j == nil {
		return nil
	}
	c := *j
	c.Headers = slices.Clone(j.Headers)
	if j.ConfigDrive != nil {
		cd := *j.ConfigDrive
		cd.UserData = slices.Clone(j.ConfigDrive.UserData)
		cd.Metadata = maps.Clone(j.ConfigDrive.Metadata)
		c.ConfigDrive = &cd
	}
	return &c
}

// ValidationError is a job spec refused before anything is done. Message is
// the user-facing text (OVH's own words where OVH has them, from the
// catalog) and never holds a header value, user data or metadata value.
// Field names what was wrong: after Parse, the JSON path in the input
// ("checkSum", "customizations.imageType", "configdrive.enabled"); from
// Validate on a Job built in code, the Job field ("Checksum",
// "ConfigDrive.Hostname").
type ValidationError struct {
	Code    Code
	Field   string
	Message string
}

// Error returns the user-facing message.
func (e *ValidationError) Error() string { return e.Message }

// MessageCode returns the catalog code.
func (e *ValidationError) MessageCode() Code { return e.Code }

func invalid(field string, code Code, args ...any) *ValidationError {
	return &ValidationError{Code: code, Field: field, Message: Text(code, args...)}
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
	ImageChecks  string             `json:"imageChecks"` // byoi's extension (issue 26)
	NetworkData  string             `json:"networkData"` // byoi's extension (issue 26)
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
// with operatingSystem "byoi_64" (OVH's dedicated.server.Reinstall).
// Properties are, in OVH's schema, "arbitrary properties to pass to
// cloud-init's config drive datasource": they join the ConfigDrive's
// metadata, as OVH's own BYOI example (properties, no imageType) expects.
type reinstallJob struct {
	OperatingSystem string                   `json:"operatingSystem"`
	Customizations  *reinstallCustomizations `json:"customizations"`
	Properties      map[string]string        `json:"properties"`
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
	// ConfigDriveMetadataTF is the same map under the key terraform-
	// provider-ovh's ovh_dedicated_server resource sends (its
	// CustomizationsWritableValue tags it "ConfigDriveMetadata"): taken
	// as configDriveMetadata, so that resource works unchanged.
	ConfigDriveMetadataTF map[string]string `json:"ConfigDriveMetadata"`
	// OVH's customizations for its own templates: refused with a clear
	// message when set (a BYOI image brings its own system), accepted
	// when null or empty.
	Language                        string `json:"language"`
	PostInstallationScript          string `json:"postInstallationScript"`
	PostInstallationScriptExtension string `json:"postInstallationScriptExtension"`
	ImageChecks                     string `json:"imageChecks"` // byoi's extension (issue 26)
	NetworkData                     string `json:"networkData"` // byoi's extension (issue 26)
}

// reinstallStorage is OVH's dedicated.server.reinstall.Storage. A BYOI
// image is written as it is onto one disk: no hardware RAID, no
// partitioning. Absent, null or empty ones are accepted (terraform-
// provider-ovh's ovh_dedicated_server_reinstall_task always sends
// "partitioning": {}); anything else is refused with a clear message.
type reinstallStorage struct {
	DiskGroupID  int                     `json:"diskGroupId"`
	HardwareRaid []reinstallHardwareRaid `json:"hardwareRaid"`
	Partitioning *reinstallPartitioning  `json:"partitioning"`
}

// reinstallHardwareRaid is OVH's dedicated.server.reinstall.storage.HardwareRaid.
type reinstallHardwareRaid struct {
	Arrays    *int `json:"arrays"`
	Disks     *int `json:"disks"`
	RaidLevel *int `json:"raidLevel"`
	Spares    *int `json:"spares"`
}

// reinstallPartitioning is OVH's dedicated.server.reinstall.storage.Partitioning.
type reinstallPartitioning struct {
	Disks      int               `json:"disks"`
	Layout     []reinstallLayout `json:"layout"`
	SchemeName string            `json:"schemeName"`
}

// reinstallLayout is one partition of OVH's partitioning layout.
type reinstallLayout struct {
	Extras     *reinstallLayoutExtras `json:"extras"`
	FileSystem string                 `json:"fileSystem"`
	MountPoint string                 `json:"mountPoint"`
	RaidLevel  *int                   `json:"raidLevel"`
	Size       *int                   `json:"size"`
}

type reinstallLayoutExtras struct {
	LV *reinstallExtrasName `json:"lv"`
	ZP *reinstallExtrasName `json:"zp"`
}

type reinstallExtrasName struct {
	Name string `json:"name"`
}

// Shape is the OVH request shape a job came in.
type Shape int

const (
	ShapeLegacy    Shape = iota + 1 // POST .../bringYourOwnImage
	ShapeReinstall                  // POST .../reinstall with byoi_64
)

// legacyFields and reinstallFields map Job field names (as used by
// Validate) to the JSON path in each shape, so that Parse's errors name
// what the user wrote.
var (
	legacyFields = map[string]string{
		"ImageURL": "URL", "ImageType": "type", "Checksum": "checkSum",
		"ChecksumType": "checkSumType", "Headers": "httpHeader",
		"DiskGroupID": "diskGroupId", "Description": "description", "ImageChecks": "imageChecks",
		"NetworkData":          "networkData",
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
		"ImageChecks":          "customizations.imageChecks",
		"NetworkData":          "customizations.networkData",
		"ConfigDrive":          "customizations",
		"ConfigDrive.Hostname": "customizations.hostname",
		"ConfigDrive.SSHKey":   "customizations.sshKey",
		"ConfigDrive.UserData": "customizations.configDriveUserData",
		"ConfigDrive.Metadata": "customizations.configDriveMetadata",
	}
)

// Parse parses a job spec in either OVH shape, normalises it and validates
// it. The shape is the reinstall body when the top-level object has an
// "operatingSystem" field, the legacy BYOI body otherwise. Field names are
// matched exactly (OVH's API is case-sensitive, and a near miss such as
// "checksum" for "checkSum" must not be silently dropped or accepted);
// unknown or repeated fields, trailing data after the object and inputs
// over MaxJobSize are refused. Every field may be null. All errors are
// *ValidationError.
func Parse(data []byte) (*Job, error) {
	j, _, err := ParseShape(data)
	return j, err
}

// ParseLegacy parses the legacy bringYourOwnImage body only (the control
// plane's POST .../bringYourOwnImage): a reinstall body is refused.
func ParseLegacy(data []byte) (*Job, error) {
	return parseAs(data, ShapeLegacy)
}

// ParseReinstall parses the reinstall body only (POST .../reinstall).
func ParseReinstall(data []byte) (*Job, error) {
	return parseAs(data, ShapeReinstall)
}

func parseAs(data []byte, want Shape) (*Job, error) {
	if len(data) > MaxJobSize {
		return nil, invalid("", JobTooLarge, len(data), MaxJobSize>>20)
	}
	return parse(data, want)
}

// ParseShape is Parse, and tells which shape the job came in.
func ParseShape(data []byte) (*Job, Shape, error) {
	if len(data) > MaxJobSize {
		return nil, 0, invalid("", JobTooLarge, len(data), MaxJobSize>>20)
	}
	reinstall, err := isReinstall(data)
	if err != nil {
		return nil, 0, err
	}
	shape := ShapeLegacy
	if reinstall {
		shape = ShapeReinstall
	}
	j, err := parse(data, shape)
	return j, shape, err
}

func parse(data []byte, shape Shape) (*Job, error) {
	var (
		job    *Job
		fields map[string]string
	)
	if shape == ShapeReinstall {
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
		if ve, ok := err.(*ValidationError); ok {
			if f, ok := fields[ve.Field]; ok {
				ve.Field = f
			}
		}
		return nil, err
	}
	return job, nil
}

func (b *legacyJob) job() (*Job, error) {
	if b.Type == ImageTypeDetect {
		// OVH's legacy schema requires the type; only the reinstall
		// shape may leave it to detection.
		return nil, invalid("type", BadImageType)
	}
	j := &Job{
		ImageURL:     b.URL,
		ImageType:    b.Type,
		Checksum:     b.CheckSum,
		ChecksumType: b.CheckSumType,
		DiskGroupID:  b.DiskGroupID,
		Description:  b.Description,
		ImageChecks:  b.ImageChecks,
		NetworkData:  b.NetworkData,
	}
	for _, h := range b.HTTPHeader {
		j.Headers = append(j.Headers, Header{Name: h.Key, Value: h.Value})
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
					return nil, invalid(fmt.Sprintf("configdrive.userMetadatas[%d].key", i), MetadataDuplicate, quoteShort(kv.Key))
				}
				cd.Metadata[kv.Key] = kv.Value
			}
			j.ConfigDrive = cd
		}
	}
	return j, nil
}

func (b *reinstallJob) job() (*Job, error) {
	if b.OperatingSystem != OSByoi && b.OperatingSystem != OSByoLinux {
		return nil, invalid("operatingSystem", OSUnsupported, quoteShort(b.OperatingSystem))
	}
	j := &Job{}
	switch len(b.Storage) {
	case 0:
	case 1:
		st := b.Storage[0]
		j.DiskGroupID = st.DiskGroupID
		if len(st.HardwareRaid) > 0 {
			return nil, invalid("storage[0].hardwareRaid", StorageHardwareRaid)
		}
		if p := st.Partitioning; p != nil && (p.Disks != 0 || len(p.Layout) > 0 || p.SchemeName != "") {
			return nil, invalid("storage[0].partitioning", StoragePartitioning)
		}
	default:
		return nil, invalid("storage", StorageMany, len(b.Storage))
	}
	c := b.Customizations
	if c == nil {
		c = &reinstallCustomizations{} // Validate reports the missing URL
	}
	for _, f := range []struct{ name, value, instead string }{
		{"language", c.Language, "the image's own system sets its language"},
		{"postInstallationScript", c.PostInstallationScript, "give the script to cloud-init in configDriveUserData"},
		{"postInstallationScriptExtension", c.PostInstallationScriptExtension, "give the script to cloud-init in configDriveUserData"},
	} {
		if f.value != "" {
			return nil, invalid("customizations."+f.name, CustomizationUnused, f.name, b.OperatingSystem, f.instead)
		}
	}
	meta, err := mergeMetadata(c.ConfigDriveMetadata, c.ConfigDriveMetadataTF, b.Properties)
	if err != nil {
		return nil, err
	}
	j.ImageURL = c.ImageURL
	j.ImageType = c.ImageType
	j.Checksum = c.ImageCheckSum
	j.ChecksumType = c.ImageCheckSumType
	j.EFIBootloaderPath = c.EFIBootloaderPath
	j.ImageChecks = c.ImageChecks
	j.NetworkData = c.NetworkData
	names := make([]string, 0, len(c.HTTPHeaders))
	for name := range c.HTTPHeaders {
		names = append(names, name)
	}
	sort.Strings(names) // a JSON object has no order: make the Job deterministic
	for _, name := range names {
		j.Headers = append(j.Headers, Header{Name: name, Value: c.HTTPHeaders[name]})
	}
	if c.Hostname != "" || c.SSHKey != "" || c.ConfigDriveUserData != "" || len(meta) > 0 {
		cd := &ConfigDrive{Hostname: c.Hostname, SSHKey: c.SSHKey}
		if c.ConfigDriveUserData != "" {
			cd.UserData = []byte(c.ConfigDriveUserData)
		}
		if len(meta) > 0 {
			cd.Metadata = meta
		}
		j.ConfigDrive = cd
	}
	return j, nil
}

// mergeMetadata joins the reinstall body's three sources of ConfigDrive
// metadata: customizations.configDriveMetadata, its terraform-provider-ovh
// spelling customizations.ConfigDriveMetadata, and the top-level
// properties. A key given by two of them is refused (which would win is
// not obvious). The result is nil when all are empty.
func mergeMetadata(sources ...map[string]string) (map[string]string, error) {
	names := []string{"customizations.configDriveMetadata", "customizations.ConfigDriveMetadata", "properties"}
	var out map[string]string
	from := map[string]int{}
	for i, m := range sources {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys) // report the same key every time
		for _, k := range keys {
			if out == nil {
				out = make(map[string]string)
			}
			if first, dup := from[k]; dup {
				return nil, invalid(names[i], MetadataTwice, quoteShort(k), names[first], names[i])
			}
			from[k] = i
			out[k] = m[k]
		}
	}
	return out, nil
}

// quoteShort quotes s for an error message, cut to 64 bytes so that an
// error never carries a large piece of untrusted input.
func quoteShort(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q...", s[:64])
	}
	return fmt.Sprintf("%q", s)
}

// lowerTrim is how the checksum is normalised.
func lowerTrim(s string) string { return strings.ToLower(s) }
