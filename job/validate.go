package job

import (
	"net/url"
	"sort"
	"strings"
)

// Normalize puts a Job built from user input in canonical form: a 0
// DiskGroupID becomes the default group 1, the checksum becomes lower-case,
// and SSH keys that parse are rewritten one canonical line each. Parse
// calls it; code building a Job from flags should call it before Validate.
// It does not change what Validate will refuse, except for these forms.
func (j *Job) Normalize() {
	if j == nil {
		return
	}
	if j.DiskGroupID == 0 {
		j.DiskGroupID = defaultDisk
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
// only, as in OVH's enum; an empty type (ImageTypeDetect) leaves it to the
// agent's detection. Errors are *ValidationError with Field set to the
// Job field; they never contain header values or user data.
func (j *Job) Validate() error {
	if j == nil {
		return invalid("", JobMissing)
	}
	if err := validateURL(j.ImageURL); err != nil {
		return err
	}
	if j.ImageType != ImageTypeDetect && j.ImageType != ImageTypeQcow2 && j.ImageType != ImageTypeRaw && j.ImageType != ImageTypeOVA {
		return invalid("ImageType", BadImageType)
	}
	if (j.Checksum == "") != (j.ChecksumType == "") {
		field := "Checksum"
		if j.ChecksumType != "" {
			field = "ChecksumType"
		}
		return invalid(field, ChecksumPair)
	}
	if j.ChecksumType != "" {
		n, ok := checksumHexLen[j.ChecksumType]
		if !ok {
			return invalid("ChecksumType", BadChecksumType)
		}
		if len(j.Checksum) != n || !isLowerHex(j.Checksum) {
			return invalid("Checksum", ChecksumFormat, n, j.ChecksumType)
		}
	}
	if j.DiskGroupID < 1 {
		return invalid("DiskGroupID", DiskGroupInvalid, j.DiskGroupID)
	}
	if err := validateHeaders(j.Headers); err != nil {
		return err
	}
	if len(j.Description) > maxDescriptionLen {
		return invalid("Description", DescriptionTooLong, len(j.Description), maxDescriptionLen)
	}
	if err := ValidateEFIBootloaderPath(j.EFIBootloaderPath); err != nil {
		return err
	}
	if j.ImageChecks != "" && j.ImageChecks != ImageChecksStrict && j.ImageChecks != ImageChecksOff {
		return invalid("ImageChecks", ImageChecksValue, quoteShort(j.ImageChecks))
	}
	if j.NetworkData != "" && j.NetworkData != NetworkDataOff {
		return invalid("NetworkData", NetworkDataValue, quoteShort(j.NetworkData))
	}
	if j.ConfigDrive != nil {
		return j.ConfigDrive.validate()
	}
	return nil
}

func validateURL(s string) error {
	const field = "ImageURL"
	if s == "" {
		return invalid(field, URLMissing)
	}
	if len(s) > maxURLLen {
		return invalid(field, URLTooLong, len(s), maxURLLen>>10)
	}
	// The url.Parse error quotes the URL, which may carry credentials:
	// only say that it failed.
	u, err := url.Parse(s)
	if err != nil {
		return invalid(field, URLUnparsable)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return invalid(field, URLScheme)
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return invalid(field, URLNoHost)
	}
	return nil
}

func validateHeaders(hs []Header) error {
	const field = "Headers"
	if len(hs) > MaxHeaders {
		return invalid(field, HeadersTooMany, len(hs), MaxHeaders)
	}
	seen := make(map[string]bool, len(hs))
	for i, h := range hs {
		// An invalid name may be a mis-split "Name value" pair, so it is
		// identified by position, not quoted. A valid name is not secret.
		if !ValidHeaderName(h.Name) {
			return invalid(field, HeaderName, i+1)
		}
		if len(h.Value) > MaxHeaderValueLen {
			return invalid(field, HeaderValueTooLong, h.Name, MaxHeaderValueLen>>10)
		}
		if !ValidHeaderValue(h.Value) {
			return invalid(field, HeaderValueControl, h.Name)
		}
		k := strings.ToLower(h.Name) // header names are case-insensitive
		if seen[k] {
			return invalid(field, HeaderDuplicate, h.Name)
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
		return invalid("ConfigDrive", ConfigDriveTooLarge, total, MaxConfigDriveSize>>20)
	}
	if c.Hostname != "" {
		if err := validateHostname(c.Hostname); err != nil {
			return err
		}
	}
	if c.SSHKey != "" {
		if _, err := ParseSSHPublicKeys(c.SSHKey); err != nil {
			return sshKeyInvalid(err)
		}
	}
	if len(c.UserData) > MaxUserDataSize {
		return invalid("ConfigDrive.UserData", UserDataTooLarge, len(c.UserData), MaxUserDataSize>>20)
	}
	const mfield = "ConfigDrive.Metadata"
	if len(c.Metadata) > MaxMetadataKeys {
		return invalid(mfield, MetadataTooMany, len(c.Metadata), MaxMetadataKeys)
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
			return invalid(mfield, MetadataEmptyKey)
		case len(k) > MaxMetadataKeyLen:
			return invalid(mfield, MetadataKeyTooLong, quoteShort(k), MaxMetadataKeyLen)
		case strings.EqualFold(k, dsmodeMetadataKey):
			// cloud-init reads "dsmode" from the metadata to decide whether
			// the datasource runs before or after networking (or not at all).
			return invalid(mfield, MetadataKeyReserved, k)
		case len(v) > MaxMetadataValueLen:
			return invalid(mfield, MetadataValueLong, quoteShort(k), MaxMetadataValueLen>>10)
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
		return invalid(field, HostnameTooLong, len(h), maxHostnameLen)
	}
	for _, label := range strings.Split(h, ".") {
		switch {
		case label == "":
			return invalid(field, HostnameEmptyLabel, quoteShort(h))
		case len(label) > maxHostnameLabel:
			return invalid(field, HostnameLabelLong, quoteShort(label))
		case !isLetter(label[0]):
			return invalid(field, HostnameLabelStart, quoteShort(label))
		case !isLetter(label[len(label)-1]) && !isDigit(label[len(label)-1]):
			return invalid(field, HostnameLabelEnd, quoteShort(label))
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isLetter(c) && !isDigit(c) && c != '-' {
				return invalid(field, HostnameLabelChars, quoteShort(label))
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

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
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

// ValidateEFIBootloaderPath checks an efiBootloaderPath by the job's rules
// (length, no control character), for the server's own property too.
func ValidateEFIBootloaderPath(p string) error {
	if len(p) > maxEFIPathLen {
		return invalid("EFIBootloaderPath", EFIPathTooLong, len(p), maxEFIPathLen)
	}
	if hasControl(p) {
		return invalid("EFIBootloaderPath", EFIPathControl)
	}
	return nil
}
