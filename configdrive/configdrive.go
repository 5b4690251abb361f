// Package configdrive builds the config-2 ConfigDrive filesystem that
// cloud-init's ConfigDrive datasource reads (OpenStack layout).
//
// The contract comes from cloud-init's source (Debian 12 ships 22.4;
// cloudinit/sources/DataSourceConfigDrive.py and
// cloudinit/sources/helpers/openstack.py):
//   - the filesystem is iso9660 or vfat, labelled "config-2" (find_candidate_devs
//     looks devices up with blkid by TYPE and LABEL);
//   - openstack/latest/meta_data.json is required (read_v2 raises NonReadable
//     without it) and must hold "uuid" (KEY_COPIES: instance-id <- uuid is
//     required, else BrokenMetadata and the drive is ignored);
//   - openstack/latest/user_data is optional, raw bytes;
//   - openstack/latest/vendor_data.json is optional: byoi's phone-home
//     (vendordata.go);
//   - openstack/latest/network_data.json is optional: DHCP on the server's
//     NICs named by MAC (networkdata.go).
//
// Only the "latest" directory is written: cloud-init prefers a dated version
// directory over "latest" when one exists (_find_working_version), so adding
// one would shadow ours.
//
// Build works in memory plus, for ISO9660, a private temporary directory
// (go-diskfs stages the tree on disk); it logs nothing and never puts user
// data or metadata values in an error.
package configdrive

import (
	"context"
	"crypto/sha1" //nolint:gosec // RFC 4122 name-based v5 UUIDs are defined over SHA-1
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Label is the filesystem label cloud-init looks for (DataSourceConfigDrive
// LABEL_TYPES; it also accepts "CONFIG-2").
const Label = "config-2"

// MaxSize is the largest image Build produces: 64 MiB. The ConfigDrive
// partition is carved from the end of the customer's disk, so it is kept small.
const MaxSize = 64 << 20

// Paths of the files inside the image (cloud-init openstack.py read_v2).
const (
	MetaDataPath = "openstack/latest/meta_data.json"
	UserDataPath = "openstack/latest/user_data"
)

var (
	// ErrTooLarge is returned when the content does not fit in MaxSize.
	ErrTooLarge = errors.New("configdrive: content too large")
	// ErrInvalid is returned for content cloud-init would reject or that
	// cannot be written faithfully (missing uuid, invalid UTF-8...).
	ErrInvalid = errors.New("configdrive: invalid content")
)

// Content is what goes on the drive.
type Content struct {
	UUID             string            // stable per deployment (see DeriveUUID); required: cloud-init ignores a drive without it
	Hostname         string            // written as "hostname" and "name" when non-empty
	SSHKey           string            // OpenSSH public key line, already validated by the caller
	UserData         []byte            // raw bytes, written byte-exact; nil or empty: no user_data file
	Meta             map[string]string // written as meta_data.json "meta" when non-empty
	AvailabilityZone string            // only written if non-empty
	LaunchIndex      int
	// PhoneHomeURL, when set, adds openstack/latest/vendor_data.json: a
	// cloud-init phone_home that POSTs once to this URL when the new
	// system has booted (see VendorData). It holds a token: never shown
	// in an error.
	PhoneHomeURL string
	// DHCPMACs, when set, adds openstack/latest/network_data.json: each
	// NIC with one of these MACs (the server's own: cloud-init refuses
	// the drive's network data for a MAC the server lacks) is configured
	// with DHCP (see NetworkData).
	DHCPMACs []string
}

// Format is the filesystem type of the drive.
type Format int

const (
	// ISO9660 with Rock Ridge names, 2 KiB blocks: the usual ConfigDrive.
	ISO9660 Format = iota
	// VFAT (FAT12/FAT16 with long names) with 4096-byte sectors, for disks
	// whose logical sector size is 4096.
	VFAT
)

// String returns the blkid TYPE of the format.
func (f Format) String() string {
	switch f {
	case ISO9660:
		return "iso9660"
	case VFAT:
		return "vfat"
	default:
		return fmt.Sprintf("Format(%d)", int(f))
	}
}

// FormatFor picks the filesystem for a disk with the given logical sector
// size. ISO9660 addresses 2 KiB logical blocks, which Linux cannot read from
// a 4096-byte-sector (4Kn) device (fs/isofs/inode.c: "Logical zone size(%d) <
// hardware blocksize(%u)"), so 4Kn disks get VFAT with 4096-byte sectors;
// everything else gets ISO9660.
func FormatFor(sectorSize int64) Format {
	if sectorSize == 4096 {
		return VFAT
	}
	return ISO9660
}

// metaData is openstack/latest/meta_data.json. Field names follow Nova's
// metadata service, as read by cloud-init.
type metaData struct {
	UUID             string            `json:"uuid"`
	Hostname         string            `json:"hostname,omitempty"`
	Name             string            `json:"name,omitempty"`
	PublicKeys       map[string]string `json:"public_keys,omitempty"`
	Meta             map[string]string `json:"meta,omitempty"`
	LaunchIndex      int               `json:"launch_index"`
	AvailabilityZone string            `json:"availability_zone,omitempty"`
}

// file is one regular file of the image; its parent directories are implied.
type file struct {
	path string // slash-separated, relative, e.g. "openstack/latest/user_data"
	data []byte
}

// validate checks what cloud-init needs and what JSON can carry faithfully.
// Errors name the field, never its value.
func (c *Content) validate() error {
	if c.UUID == "" {
		return fmt.Errorf("%w: uuid is required (cloud-init ignores a config drive without one)", ErrInvalid)
	}
	if c.LaunchIndex < 0 {
		return fmt.Errorf("%w: launch index is negative", ErrInvalid)
	}
	// encoding/json silently replaces invalid UTF-8 with U+FFFD: refuse
	// instead of writing something else than asked.
	for _, s := range []struct{ name, v string }{
		{"uuid", c.UUID}, {"hostname", c.Hostname}, {"ssh key", c.SSHKey}, {"availability zone", c.AvailabilityZone},
	} {
		if !utf8.ValidString(s.v) {
			return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, s.name)
		}
	}
	for k, v := range c.Meta {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("%w: a meta key or value is not valid UTF-8", ErrInvalid)
		}
	}
	return nil
}

// metaDataJSON renders meta_data.json. Map keys are sorted by encoding/json,
// so the output is deterministic.
func (c *Content) metaDataJSON() ([]byte, error) {
	md := metaData{
		UUID:             c.UUID,
		Hostname:         c.Hostname,
		Name:             c.Hostname,
		LaunchIndex:      c.LaunchIndex,
		AvailabilityZone: c.AvailabilityZone,
	}
	if c.SSHKey != "" {
		md.PublicKeys = map[string]string{"default": c.SSHKey}
	}
	if len(c.Meta) > 0 {
		md.Meta = c.Meta
	}
	b, err := json.Marshal(md)
	if err != nil {
		return nil, fmt.Errorf("configdrive: encode meta_data.json: %w", err)
	}
	return append(b, '\n'), nil
}

// files lists the files of the drive for c.
func (c *Content) files() ([]file, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	md, err := c.metaDataJSON()
	if err != nil {
		return nil, err
	}
	fs := []file{{path: MetaDataPath, data: md}}
	if len(c.UserData) > 0 {
		fs = append(fs, file{path: UserDataPath, data: c.UserData})
	}
	if c.PhoneHomeURL != "" {
		vd, err := VendorData(c.PhoneHomeURL)
		if err != nil {
			return nil, err
		}
		fs = append(fs, file{path: VendorDataPath, data: vd})
	}
	if len(c.DHCPMACs) > 0 {
		nd, err := NetworkData(c.DHCPMACs)
		if err != nil {
			return nil, err
		}
		fs = append(fs, file{path: NetworkDataPath, data: nd})
	}
	return fs, nil
}

// Build returns the image bytes of a config-2 filesystem of format f holding
// c, sized to the content (at most MaxSize; more returns ErrTooLarge).
func Build(ctx context.Context, c Content, f Format) ([]byte, error) {
	files, err := c.files()
	if err != nil {
		return nil, err
	}
	return build(ctx, files, f)
}

// build writes files into an image of format f.
func build(ctx context.Context, files []file, f Format) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch f {
	case ISO9660:
		return buildISO(ctx, files)
	case VFAT:
		return buildFAT(ctx, files)
	default:
		return nil, fmt.Errorf("%w: unknown format %d", ErrInvalid, int(f))
	}
}

// tooLarge is the error for content that needs more than MaxSize.
func tooLarge(need int64) error {
	return fmt.Errorf("%w: the config drive needs about %d bytes, more than the limit of %d bytes (64 MiB): shorten the user data",
		ErrTooLarge, need, int64(MaxSize))
}

// uuidNamespace is the RFC 4122 name space of byoi's deployment UUIDs
// (a fixed random UUID; changing it changes every derived UUID).
var uuidNamespace = [16]byte{
	0x6f, 0x1c, 0x9a, 0x52, 0x3e, 0x0b, 0x4d, 0x8e,
	0x9b, 0x27, 0x5c, 0xd4, 0x80, 0x13, 0xa6, 0x4f,
}

// DeriveUUID returns a deterministic RFC 4122 version 5 UUID (SHA-1 of a
// byoi name space and seed), in canonical lowercase form. The agent seeds it
// with what identifies a deployment (image URL, hostname, disk), so running
// the same deployment again gives the same instance-id and cloud-init does not
// treat the reinstall as a new instance twice.
func DeriveUUID(seed string) string {
	h := sha1.New() //nolint:gosec // required by RFC 4122 section 4.3
	h.Write(uuidNamespace[:])
	h.Write([]byte(seed))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50 // version 5
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
