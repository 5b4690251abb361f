package job

import (
	"errors"
	"maps"
	"testing"
)

// TestReinstallBodiesOfOVHTools: the reinstall bodies OVH's own tools send
// (issue 24) parse, with the meaning OVH gives them.
func TestReinstallBodiesOfOVHTools(t *testing.T) {
	const url = `"imageURL":"https://images.example.com/d.qcow2"`
	for _, tt := range []struct {
		name, body string
		typ        string
		group      int
		meta       map[string]string
	}{
		// terraform-provider-ovh's ovh_dedicated_server_reinstall_task
		// always sends partitioning (an empty object when none is set).
		{"terraform reinstall_task", `{"operatingSystem":"byoi_64","customizations":{` + url + `,"imageType":"qcow2"},"storage":[{"diskGroupId":2,"partitioning":{}}]}`, "qcow2", 2, nil},
		// imageType is optional in OVH's schema: the agent detects it.
		{"no imageType", `{"operatingSystem":"byolinux_64","customizations":{` + url + `}}`, ImageTypeDetect, 1, nil},
		{"imageType null", `{"operatingSystem":"byoi_64","customizations":{` + url + `,"imageType":null}}`, ImageTypeDetect, 1, nil},
		{"empty storage parts", `{"operatingSystem":"byoi_64","customizations":{` + url + `},"storage":[{"hardwareRaid":[],"partitioning":{"disks":0,"layout":[],"schemeName":""}}]}`, ImageTypeDetect, 1, nil},
		{"null storage parts", `{"operatingSystem":"byoi_64","customizations":{` + url + `},"storage":[{"diskGroupId":0,"hardwareRaid":null,"partitioning":null}]}`, ImageTypeDetect, 1, nil},
		// OVH's own BYOI example: properties become the ConfigDrive's
		// metadata ("arbitrary properties to pass to cloud-init's config
		// drive datasource").
		{"properties", `{"operatingSystem":"byolinux_64","customizations":{` + url + `,"hostname":"mon-tux"},"properties":{"essential":"false","role":"webservers"}}`, ImageTypeDetect, 1, map[string]string{"essential": "false", "role": "webservers"}},
		// terraform-provider-ovh's ovh_dedicated_server spells it
		// ConfigDriveMetadata.
		{"ConfigDriveMetadata", `{"operatingSystem":"byoi_64","customizations":{` + url + `,"ConfigDriveMetadata":{"foo":"bar"},"configDriveMetadata":{"hello":"world"}}}`, ImageTypeDetect, 1, map[string]string{"foo": "bar", "hello": "world"}},
		// OVH's customizations for its templates, empty: accepted.
		{"empty template fields", `{"operatingSystem":"byoi_64","customizations":{` + url + `,"language":"","postInstallationScript":null,"postInstallationScriptExtension":""}}`, ImageTypeDetect, 1, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j, err := ParseReinstall([]byte(tt.body))
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if j.ImageType != tt.typ || j.DiskGroupID != tt.group {
				t.Errorf("type %q group %d, want %q %d", j.ImageType, j.DiskGroupID, tt.typ, tt.group)
			}
			var meta map[string]string
			if j.ConfigDrive != nil {
				meta = j.ConfigDrive.Metadata
			}
			if !maps.Equal(meta, tt.meta) {
				t.Errorf("metadata %v, want %v", meta, tt.meta)
			}
		})
	}
}

// TestReinstallRefusalsForOVHTools: what OVH's tools may send that a BYOI
// install cannot honour is refused with its own message and field.
func TestReinstallRefusalsForOVHTools(t *testing.T) {
	const url = `"imageURL":"https://images.example.com/d.qcow2"`
	for _, tt := range []struct {
		name, body, field string
		code              Code
		want              string
	}{
		{"hardware raid", `{"operatingSystem":"byoi_64","customizations":{` + url + `},"storage":[{"diskGroupId":2,"hardwareRaid":[{"raidLevel":5}]}]}`, "storage[0].hardwareRaid", StorageHardwareRaid, Text(StorageHardwareRaid)},
		{"hardware raid defaults", `{"operatingSystem":"byoi_64","customizations":{` + url + `},"storage":[{"hardwareRaid":[{}]}]}`, "storage[0].hardwareRaid", StorageHardwareRaid, Text(StorageHardwareRaid)},
		{"layout", `{"operatingSystem":"byoi_64","customizations":{` + url + `},"storage":[{"partitioning":{"layout":[{"fileSystem":"ext4","mountPoint":"/","raidLevel":1,"size":20480,"extras":{"lv":{"name":"root"}}}]}}]}`, "storage[0].partitioning", StoragePartitioning, Text(StoragePartitioning)},
		{"disks", `{"operatingSystem":"byoi_64","customizations":{` + url + `},"storage":[{"partitioning":{"disks":4}}]}`, "storage[0].partitioning", StoragePartitioning, Text(StoragePartitioning)},
		{"scheme", `{"operatingSystem":"byoi_64","customizations":{` + url + `},"storage":[{"partitioning":{"schemeName":"default"}}]}`, "storage[0].partitioning", StoragePartitioning, Text(StoragePartitioning)},
		{"layout unknown field", `{"operatingSystem":"byoi_64","customizations":{` + url + `},"storage":[{"partitioning":{"layout":[{"fs":"ext4"}]}}]}`, "storage[0].partitioning.layout[0].fs", JobUnknownField, `unknown field "storage[0].partitioning.layout[0].fs"`},
		{"post-installation script", `{"operatingSystem":"byoi_64","customizations":{` + url + `,"postInstallationScript":"IyEvYmluL3NoCg=="}}`, "customizations.postInstallationScript", CustomizationUnused,
			"customizations.postInstallationScript is not used with byoi_64, which installs your own image: give the script to cloud-init in configDriveUserData"},
		{"language", `{"operatingSystem":"byolinux_64","customizations":{` + url + `,"language":"fr-fr"}}`, "customizations.language", CustomizationUnused,
			"customizations.language is not used with byolinux_64, which installs your own image: the image's own system sets its language"},
		{"metadata twice", `{"operatingSystem":"byoi_64","customizations":{` + url + `,"ConfigDriveMetadata":{"k":"1"},"configDriveMetadata":{"k":"2"}}}`, "customizations.ConfigDriveMetadata", MetadataTwice,
			`ConfigDrive metadata key "k" is given in both customizations.configDriveMetadata and customizations.ConfigDriveMetadata`},
		{"properties dsmode", `{"operatingSystem":"byoi_64","customizations":{` + url + `},"properties":{"dsmode":"local"}}`, "customizations.configDriveMetadata", MetadataKeyReserved, Text(MetadataKeyReserved, "dsmode")},
		// The legacy shape keeps OVH's required type.
		{"legacy without type", `{"URL":"https://h/i"}`, "type", BadImageType, Text(BadImageType)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.body))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %v, want a refusal", err)
			}
			if ve.Code != tt.code || ve.Field != tt.field || ve.Message != tt.want {
				t.Errorf("got %s %q %q, want %s %q %q", ve.Code, ve.Field, ve.Message, tt.code, tt.field, tt.want)
			}
		})
	}
}

// TestValidateDetect: a Job built in code may leave the type to detection.
func TestValidateDetect(t *testing.T) {
	j := &Job{ImageURL: "https://h/i", ImageType: ImageTypeDetect, DiskGroupID: 1}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	j.ImageType = "iso"
	if err := j.Validate(); err == nil {
		t.Fatal("iso accepted")
	}
}
