package job

import (
	"context"
	"errors"
	"fmt"
)

// Code names one customer-facing message. Codes are stable: scripts, the
// control plane's store and the Control Panel key on them, so a code is
// never renamed or reused; its text may be improved.
type Code string

// Fault tells whose fault a failure is, as OVH's task statuses do:
// customerError (the image, the checksum, the job) or ovhError (ours: the
// disk, the agent, the control plane).
type Fault int

const (
	FaultNone     Fault = iota // not a failure (progress and warning texts)
	FaultCustomer              // task status customerError
	FaultProvider              // task status ovhError
)

// entry is one message of the catalog: a fmt format and whose fault it is.
type entry struct {
	format string
	fault  Fault
}

// The message catalog: every message byoi shows a customer, in one place.
// OVH's own words are kept where OVH has them (reference/API.md, the BYOI
// guides 2021-2026), because customers and their scripts know them; they are
// marked "OVH". Formats take the arguments listed in the comment.
const (
	// Job spec: decoding.
	JobTooLarge       Code = "JobTooLarge"       // size, limit MiB
	JobNotObject      Code = "JobNotObject"      //
	JobSyntax         Code = "JobSyntax"         // byte offset
	JobTruncated      Code = "JobTruncated"      //
	JobInvalidJSON    Code = "JobInvalidJSON"    // byte offset
	JobTrailingData   Code = "JobTrailingData"   //
	JobUnknownField   Code = "JobUnknownField"   // quoted path
	JobDuplicateField Code = "JobDuplicateField" // quoted path
	JobFieldKind      Code = "JobFieldKind"      // path, wanted kind
	JobFieldType      Code = "JobFieldType"      // path
	JobShape          Code = "JobShape"          //
	JobMissing        Code = "JobMissing"        //
	OSUnsupported     Code = "OSUnsupported"     // quoted operatingSystem
	StorageMany       Code = "StorageMany"       // entries

	// Job spec: fields.
	URLMissing          Code = "URLMissing"          //
	URLTooLong          Code = "URLTooLong"          // bytes, limit KiB
	URLUnparsable       Code = "URLUnparsable"       //
	URLScheme           Code = "URLScheme"           //
	URLNoHost           Code = "URLNoHost"           //
	BadImageType        Code = "BadImageType"        // OVH
	ChecksumPair        Code = "ChecksumPair"        // OVH
	BadChecksumType     Code = "BadChecksumType"     // OVH, with sha512 added
	ChecksumFormat      Code = "ChecksumFormat"      // digits, type
	DiskGroupInvalid    Code = "DiskGroupInvalid"    // the value
	HeadersTooMany      Code = "HeadersTooMany"      // given, limit
	HeaderName          Code = "HeaderName"          // position (1-based)
	HeaderValueTooLong  Code = "HeaderValueTooLong"  // name, limit KiB
	HeaderValueControl  Code = "HeaderValueControl"  // name
	HeaderDuplicate     Code = "HeaderDuplicate"     // name
	HeaderFlagNoColon   Code = "HeaderFlagNoColon"   //
	HeaderFlagName      Code = "HeaderFlagName"      //
	DescriptionTooLong  Code = "DescriptionTooLong"  // bytes, limit
	EFIPathTooLong      Code = "EFIPathTooLong"      // bytes, limit
	EFIPathControl      Code = "EFIPathControl"      //
	ConfigDriveTooLarge Code = "ConfigDriveTooLarge" // bytes, limit MiB
	HostnameTooLong     Code = "HostnameTooLong"     // length, limit
	HostnameEmptyLabel  Code = "HostnameEmptyLabel"  // quoted hostname
	HostnameLabelLong   Code = "HostnameLabelLong"   // quoted label
	HostnameLabelStart  Code = "HostnameLabelStart"  // quoted label
	HostnameLabelEnd    Code = "HostnameLabelEnd"    // quoted label
	HostnameLabelChars  Code = "HostnameLabelChars"  // quoted label
	UserDataTooLarge    Code = "UserDataTooLarge"    // bytes, limit MiB
	MetadataTooMany     Code = "MetadataTooMany"     // keys, limit
	MetadataEmptyKey    Code = "MetadataEmptyKey"    //
	MetadataKeyTooLong  Code = "MetadataKeyTooLong"  // quoted key, limit
	MetadataKeyReserved Code = "MetadataKeyReserved" // key
	MetadataValueLong   Code = "MetadataValueLong"   // quoted key, limit KiB
	MetadataDuplicate   Code = "MetadataDuplicate"   // quoted key

	// Job spec: SSH public keys (the field prefix, "sshKey: " or "sshKey
	// line N: ", is added by sshKeyPrefix).
	SSHKeyFieldTooLong Code = "SSHKeyFieldTooLong" // bytes, limit KiB
	SSHKeyTooMany      Code = "SSHKeyTooMany"      // limit
	SSHKeyNone         Code = "SSHKeyNone"         //
	SSHKeyControl      Code = "SSHKeyControl"      //
	SSHKeyEmpty        Code = "SSHKeyEmpty"        //
	SSHKeyType         Code = "SSHKeyType"         // quoted type
	SSHKeyNoData       Code = "SSHKeyNoData"       // type
	SSHKeyBase64       Code = "SSHKeyBase64"       // type
	SSHKeyTypeMismatch Code = "SSHKeyTypeMismatch" // type
	SSHKeyTruncated    Code = "SSHKeyTruncated"    // type
	SSHKeyEd25519Size  Code = "SSHKeyEd25519Size"  // type, bytes
	SSHKeyCurve        Code = "SSHKeyCurve"        // type
	SSHKeyECDSAPoint   Code = "SSHKeyECDSAPoint"   // type
	SSHKeyEmptyInt     Code = "SSHKeyEmptyInt"     // type
	SSHKeyTrailing     Code = "SSHKeyTrailing"     // type, bytes
	SSHKeyRSASmall     Code = "SSHKeyRSASmall"     // bits, minimum

	// The deployment.
	DownloadFailed     Code = "DownloadFailed"     // OVH; redacted URL
	ChecksumMismatch   Code = "ChecksumMismatch"   // OVH; type, got, want
	FormatMismatch     Code = "FormatMismatch"     // OVH 2026; found, declared
	NoPartitionTable   Code = "NoPartitionTable"   // OVH 2026; what it seems to contain
	ImageTooLarge      Code = "ImageTooLarge"      // OVH 2026; size, target, target size
	Qcow2TooBig        Code = "Qcow2TooBig"        // OVH
	Qcow2Refused       Code = "Qcow2Refused"       // reason
	ImageRefused       Code = "ImageRefused"       // format, reason
	ManifestMismatch   Code = "ManifestMismatch"   // member, algorithm, got, want
	ManifestRefused    Code = "ManifestRefused"    // reason
	SectorSizeMismatch Code = "SectorSizeMismatch" // image, disk
	TableRefused       Code = "TableRefused"       // reason
	WriteFailed        Code = "WriteFailed"        // OVH; image type
	GPTRelocateFailed  Code = "GPTRelocateFailed"  // OVH
	ConfigDriveFailed  Code = "ConfigDriveFailed"  // OVH
	BootloaderMissing  Code = "BootloaderMissing"  // path, why
	DiskInUse          Code = "DiskInUse"          // disk, reason
	DiskGroupMissing   Code = "DiskGroupMissing"   // group, the groups there are
	Interrupted        Code = "Interrupted"        //
	AgentSilent        Code = "AgentSilent"        // duration
	NoProgress         Code = "NoProgress"         // duration, step
	Internal           Code = "Internal"           // the error text

	// Progress, as the customer's status message shows it.
	MsgStarting      Code = "MsgStarting"      //
	MsgPreflight     Code = "MsgPreflight"     //
	MsgDownloading   Code = "MsgDownloading"   // done, total (human sizes)
	MsgDownloadingN  Code = "MsgDownloadingN"  // done (size unknown)
	MsgVerifying     Code = "MsgVerifying"     //
	MsgWriting       Code = "MsgWriting"       // percent
	MsgWritingStart  Code = "MsgWritingStart"  //
	MsgConfiguring   Code = "MsgConfiguring"   //
	MsgDone          Code = "MsgDone"          //
	MsgRestarted     Code = "MsgRestarted"     // attempt
	MsgWaitingAgent  Code = "MsgWaitingAgent"  //
	MsgStepPartition Code = "MsgStepPartition" //
	MsgStepBoot      Code = "MsgStepBoot"      //

	// Warnings.
	WarnOtherConfigDrive Code = "WarnOtherConfigDrive" // device
	WarnNoLegacyBoot     Code = "WarnNoLegacyBoot"     //
	WarnNoESP            Code = "WarnNoESP"            //
	WarnESPUnreadable    Code = "WarnESPUnreadable"    // partition number, cause
	WarnNoRemovablePath  Code = "WarnNoRemovablePath"  // path
	WarnRereadDeferred   Code = "WarnRereadDeferred"   //
	WarnProtectiveMBR    Code = "WarnProtectiveMBR"    // what was repaired
	WarnImageNote        Code = "WarnImageNote"        // text from the image reader (skipped OVA disks)
	WarnNoBootEntry      Code = "WarnNoBootEntry"      // why
	WarnDownloadRetry    Code = "WarnDownloadRetry"    // offset (human size), retry, max retries

	// The control plane's API errors (OVH's words where OVH has them).
	APITaskRunning     Code = "APITaskRunning"     // OVH; task id, function, status, server
	APINotFound        Code = "APINotFound"        // OVH; object
	APIInvalidSig      Code = "APIInvalidSig"      // OVH
	APIOutOfTime       Code = "APIOutOfTime"       // OVH
	APIInvalidKey      Code = "APIInvalidKey"      // OVH
	APIInvalidCred     Code = "APIInvalidCred"     // OVH
	APINotAuthed       Code = "APINotAuthed"       // OVH
	APIBodyTooLarge    Code = "APIBodyTooLarge"    // limit
	APIBadRequest      Code = "APIBadRequest"      // what
	APIMethod          Code = "APIMethod"          // method
	APIInternal        Code = "APIInternal"        //
	APINoDeployment    Code = "APINoDeployment"    // server
	APICSRF            Code = "APICSRF"            //
	APIAgentNotAllowed Code = "APIAgentNotAllowed" //
	APIPickupTimeout   Code = "APIPickupTimeout"   // duration
	MsgCancelled       Code = "MsgCancelled"       //
	APIStaleAttempt    Code = "APIStaleAttempt"    // attempt, current attempt
	APIDeploymentGone  Code = "APIDeploymentGone"  // deployment id
	APIBadToken        Code = "APIBadToken"        //
	MsgTaskReinstall   Code = "MsgTaskReinstall"   // OVH; a reinstallServer task's comment
	MsgBootHarddisk    Code = "MsgBootHarddisk"    // boot description
	MsgBootRescue      Code = "MsgBootRescue"      // boot description
	APIBadParam        Code = "APIBadParam"        // parameter, what it must be

	// issue 26: the image's own system checked against the server
	// (imagecheck). Refusals and warnings are FaultCustomer: the image is
	// the customer's; notes say what was not examined.
	CheckUEFINoESP        Code = "CheckUEFINoESP"        //
	CheckUEFINoLoader     Code = "CheckUEFINoLoader"     // partition number, why
	CheckBIOSNoBootCode   Code = "CheckBIOSNoBootCode"   //
	CheckBIOSNoCoreSpace  Code = "CheckBIOSNoCoreSpace"  //
	CheckNoLinuxRoot      Code = "CheckNoLinuxRoot"      // why
	CheckNotExamined      Code = "CheckNotExamined"      // what, why
	CheckNoKernel         Code = "CheckNoKernel"         //
	CheckKernelMissing    Code = "CheckKernelMissing"    // kernel path
	CheckInitrdMissing    Code = "CheckInitrdMissing"    // initramfs path
	CheckRootUnresolved   Code = "CheckRootUnresolved"   // root= value
	CheckRootDevName      Code = "CheckRootDevName"      // root= value
	CheckDiskDriverAbsent Code = "CheckDiskDriverAbsent" // initramfs, module, kernel version
	CheckModuleDepAbsent  Code = "CheckModuleDepAbsent"  // initramfs, module, the module needing it, kernel version
	CheckRootFSModule     Code = "CheckRootFSModule"     // initramfs, module, filesystem type, kernel version
	CheckNoInitramfs      Code = "CheckNoInitramfs"      // module, kernel version
	CheckNICDriverAbsent  Code = "CheckNICDriverAbsent"  // module, interface, kernel version
	CheckFstabDevName     Code = "CheckFstabDevName"     // line, device
	CheckFstabUnresolved  Code = "CheckFstabUnresolved"  // line, device, mount point
	CheckFstabNoFail      Code = "CheckFstabNoFail"      // line, device, mount point
	CheckCloudInitMissing Code = "CheckCloudInitMissing" //
	CheckCloudInitOff     Code = "CheckCloudInitOff"     // why
	CheckDatasourceList   Code = "CheckDatasourceList"   // the list
	CheckNetKernelName    Code = "CheckNetKernelName"    // file[:line], name
	CheckNetForeignMAC    Code = "CheckNetForeignMAC"    // file[:line], MAC, the server's MACs
	// issue 26, the integration: the job's imageChecks option, a strict
	// job's warning, more refusals than the first.
	ImageChecksValue Code = "ImageChecksValue" // the value given
	CheckStrict      Code = "CheckStrict"      // the warning's text
	CheckMore        Code = "CheckMore"        // the first refusal's text, how many more, their texts
	// issue 26, network on first boot: the job's networkData option, a
	// ConfigDrive without network data because the boot NIC is unknown.
	NetworkDataValue Code = "NetworkDataValue" // the value given
	WarnNoBootNIC    Code = "WarnNoBootNIC"    //

	// Power through the server's BMC (issue 25).
	PowerNoAnswer    Code = "PowerNoAnswer"    // operation
	PowerCredentials Code = "PowerCredentials" // operation
	PowerTimeout     Code = "PowerTimeout"     // operation, duration
	PowerUnsupported Code = "PowerUnsupported" // operation, what the BMC answered
	PowerFailed      Code = "PowerFailed"      // operation, what the BMC answered
	WarnBootOverride Code = "WarnBootOverride" // what the BMC answered

	// The control plane's power actions (issue 25, wiring).
	MsgPowerRebooted     Code = "MsgPowerRebooted"     // what byoi-api did (power-cycled, powered on), the BMC
	MsgPowerAgentWaiting Code = "MsgPowerAgentWaiting" //
	MsgPowerByHand       Code = "MsgPowerByHand"       //
	MsgPowerAbandoned    Code = "MsgPowerAbandoned"    // claims
	MsgRescueTimeout     Code = "MsgRescueTimeout"     // duration
	MsgBooted            Code = "MsgBooted"            // time from done
	MsgNoSignOfLife      Code = "MsgNoSignOfLife"      // duration
	MsgPowerRebooting    Code = "MsgPowerRebooting"    //

	// Trusting the network less (issue 22).
	APIAttemptsExhausted Code = "APIAttemptsExhausted" // attempts
	APIReplayed          Code = "APIReplayed"          //
	APIBusy              Code = "APIBusy"              //
	APIBodyTimeout       Code = "APIBodyTimeout"       // duration
	APICredentialInvalid Code = "APICredentialInvalid" // OVH
	APIBootRateLimited   Code = "APIBootRateLimited"   // seconds
	// OVH's own tools (issue 24): the reinstall body's fields OVH's tools
	// send, the image type detected, the API's answers for them.
	StorageHardwareRaid  Code = "StorageHardwareRaid"  //
	StoragePartitioning  Code = "StoragePartitioning"  //
	CustomizationUnused  Code = "CustomizationUnused"  // field, operatingSystem, what to do instead
	MetadataTwice        Code = "MetadataTwice"        // quoted key, first source, second source
	MsgImageTypeDetected Code = "MsgImageTypeDetected" // type, what the first bytes are
	ImageTypeUndetected  Code = "ImageTypeUndetected"  // what the first bytes look like
	APINoFeature         Code = "APINoFeature"         // agent version
	MsgRebootByHand      Code = "MsgRebootByHand"      // a hardReboot task waiting for hands
	MsgRebootSeen        Code = "MsgRebootSeen"        //

	// A deployment stopped by SIGTERM, Ctrl-C or its context (issue 22
	// point 12): said once, with the step it was in, whatever error the
	// step's own code returned on the way out.
	InterruptedStep Code = "InterruptedStep" // step
	// The control plane's image cache (issue 28).
	WarnImageCacheWait     Code = "WarnImageCacheWait"     // retry, max retries
	WarnImageCacheFallback Code = "WarnImageCacheFallback" // offset (human size)
	CacheNotServed         Code = "CacheNotServed"         //
	CacheBusy              Code = "CacheBusy"              // seconds
)

// catalog holds the text of every Code.
var catalog = map[Code]entry{
	JobTooLarge:       {"job is %d bytes, more than the %d MiB limit", FaultCustomer},
	JobNotObject:      {"job must be a JSON object", FaultCustomer},
	JobSyntax:         {"job is not valid JSON (syntax error at byte %d)", FaultCustomer},
	JobTruncated:      {"job is not valid JSON (unexpected end of input)", FaultCustomer},
	JobInvalidJSON:    {"job is not valid JSON (at byte %d)", FaultCustomer},
	JobTrailingData:   {"trailing data after the job's JSON object", FaultCustomer},
	JobUnknownField:   {"unknown field %s", FaultCustomer},
	JobDuplicateField: {"field %s is given more than once", FaultCustomer},
	JobFieldKind:      {"field %q must be %s or null", FaultCustomer},
	JobFieldType:      {"field %q has the wrong type", FaultCustomer},
	JobShape:          {"job does not match the expected shape", FaultCustomer},
	JobMissing:        {"no job", FaultCustomer},
	OSUnsupported:     {`operatingSystem %s is not supported: byoi installs only "byoi_64" or "byolinux_64" (bring your own image)`, FaultCustomer},
	StorageMany:       {"storage has %d entries: a BYOI image is written to a single disk group, give one", FaultCustomer},

	URLMissing:          {"image URL is missing", FaultCustomer},
	URLTooLong:          {"image URL is %d bytes, more than the %d KiB limit", FaultCustomer},
	URLUnparsable:       {"image URL cannot be parsed as a URL", FaultCustomer},
	URLScheme:           {"image URL must start with http:// or https://", FaultCustomer},
	URLNoHost:           {"image URL has no host name", FaultCustomer},
	BadImageType:        {"Bad format image, expected : qcow2, raw, ova.", FaultCustomer},
	ChecksumPair:        {"Please provide checkSum AND checkSumType or none of them", FaultCustomer},
	BadChecksumType:     {"Bad checkSumType, expected : sha1, sha256, md5, sha512.", FaultCustomer},
	ChecksumFormat:      {"checkSum must be %d hexadecimal digits for %s", FaultCustomer},
	DiskGroupInvalid:    {"diskGroupId must be a positive disk group number (0 or absent means the default group 1), got %d", FaultCustomer},
	HeadersTooMany:      {"%d HTTP headers given, at most %d are accepted", FaultCustomer},
	HeaderName:          {"HTTP header %d: the name is not a valid HTTP header name (RFC 9110 token: letters, digits and !#$%%&'*+-.^_`|~)", FaultCustomer},
	HeaderValueTooLong:  {"HTTP header %q: the value is longer than %d KiB", FaultCustomer},
	HeaderValueControl:  {"HTTP header %q: the value contains a line break or another control character", FaultCustomer},
	HeaderDuplicate:     {"HTTP header %q is given more than once", FaultCustomer},
	HeaderFlagNoColon:   {`--header must be "Name: value" (no colon found)`, FaultCustomer},
	HeaderFlagName:      {"--header: the text before the first colon is not a valid HTTP header name (RFC 9110 token: letters, digits and !#$%%&'*+-.^_`|~, no spaces)", FaultCustomer},
	DescriptionTooLong:  {"description is %d bytes, more than the %d-byte limit", FaultCustomer},
	EFIPathTooLong:      {"efiBootloaderPath is %d bytes, more than the %d-byte limit", FaultCustomer},
	EFIPathControl:      {"efiBootloaderPath contains a control character", FaultCustomer},
	ConfigDriveTooLarge: {"configdrive content is %d bytes, more than the %d MiB limit", FaultCustomer},
	HostnameTooLong:     {"hostname is %d characters, more than %d", FaultCustomer},
	HostnameEmptyLabel:  {"hostname %s has an empty label (RFC 1035: labels between dots are 1 to 63 characters)", FaultCustomer},
	HostnameLabelLong:   {"hostname label %s is longer than 63 characters (RFC 1035)", FaultCustomer},
	HostnameLabelStart:  {"hostname label %s must start with a letter (RFC 1035)", FaultCustomer},
	HostnameLabelEnd:    {"hostname label %s must end with a letter or digit (RFC 1035)", FaultCustomer},
	HostnameLabelChars:  {"hostname label %s may contain only letters, digits and hyphens (RFC 1035)", FaultCustomer},
	UserDataTooLarge:    {"configdrive userData is %d bytes, more than the %d MiB limit", FaultCustomer},
	MetadataTooMany:     {"configdrive metadata has %d keys, more than the limit of %d", FaultCustomer},
	MetadataEmptyKey:    {"configdrive metadata has an empty key", FaultCustomer},
	MetadataKeyTooLong:  {"configdrive metadata key %s is longer than %d bytes", FaultCustomer},
	MetadataKeyReserved: {"configdrive metadata key %q is not allowed: it changes how cloud-init uses the ConfigDrive", FaultCustomer},
	MetadataValueLong:   {"configdrive metadata value of key %s is longer than %d KiB", FaultCustomer},
	MetadataDuplicate:   {"configdrive userMetadatas: key %s is given more than once", FaultCustomer},

	SSHKeyFieldTooLong: {"sshKey is %d bytes, more than the %d KiB limit", FaultCustomer},
	SSHKeyTooMany:      {"sshKey holds more than %d keys", FaultCustomer},
	SSHKeyNone:         {"sshKey holds no key", FaultCustomer},
	SSHKeyControl:      {`ssh key contains a control character (want one "type base64 [comment]" line)`, FaultCustomer},
	SSHKeyEmpty:        {"ssh key is empty", FaultCustomer},
	SSHKeyType:         {"ssh key type %s is not supported (want ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com or ssh-dss; options before the key are not accepted)", FaultCustomer},
	SSHKeyNoData:       {"ssh key of type %s has no key data", FaultCustomer},
	SSHKeyBase64:       {"ssh key of type %s: key data is not valid base64", FaultCustomer},
	SSHKeyTypeMismatch: {"ssh key of type %s: key data does not start with its type (damaged or mismatched key)", FaultCustomer},
	SSHKeyTruncated:    {"ssh key of type %s: key data is truncated", FaultCustomer},
	SSHKeyEd25519Size:  {"ssh key of type %s: Ed25519 key is %d bytes, want 32", FaultCustomer},
	SSHKeyCurve:        {"ssh key of type %s: curve name does not match the type", FaultCustomer},
	SSHKeyECDSAPoint:   {"ssh key of type %s: malformed ECDSA point", FaultCustomer},
	SSHKeyEmptyInt:     {"ssh key of type %s: empty integer in key data", FaultCustomer},
	SSHKeyTrailing:     {"ssh key of type %s: %d unexpected bytes after the key data", FaultCustomer},
	SSHKeyRSASmall:     {"ssh key of type ssh-rsa has a %d-bit modulus: OpenSSH refuses RSA keys under %d bits", FaultCustomer},

	DownloadFailed:     {"Could not download image located : %s.", FaultCustomer},
	ChecksumMismatch:   {"Bad %s for downloaded file, got : %s while expecting %s.", FaultCustomer},
	FormatMismatch:     {"image provided format is %s which does not match expected %s format", FaultCustomer},
	NoPartitionTable:   {"image provided format is not of type raw because no partition table was found. It seems to contain: %s", FaultCustomer},
	ImageTooLarge:      {"image provided has a size of %d bytes which is larger than %s of %d bytes", FaultCustomer},
	Qcow2TooBig:        {"Could not download, qcow2 image is too big to download in memory.", FaultCustomer},
	Qcow2Refused:       {"qcow2 image refused: %s", FaultCustomer},
	ImageRefused:       {"%s image refused: %s", FaultCustomer},
	ManifestMismatch:   {"Bad %[2]s for %[1]s in the OVA manifest, got : %[3]s while expecting %[4]s.", FaultCustomer},
	ManifestRefused:    {"OVA manifest refused: %s", FaultCustomer},
	SectorSizeMismatch: {"image sector size %d does not match disk sector size %d", FaultCustomer},
	TableRefused:       {"image partition table refused: %s", FaultCustomer},
	WriteFailed:        {"Can't write %s on disk.", FaultProvider},
	GPTRelocateFailed:  {"Can not move backup GPT data structures to the end of disk.", FaultCustomer},
	ConfigDriveFailed:  {"Could not create configdrive on disk.", FaultCustomer},
	BootloaderMissing:  {"EFI bootloader %s not found: %s", FaultCustomer},
	DiskInUse:          {"refusing %s: %s", FaultProvider},
	DiskGroupMissing:   {"disk group %d does not exist on this server: %s", FaultCustomer},
	Interrupted:        {"interrupted", FaultProvider},
	AgentSilent:        {"the agent stopped reporting: no news from the server for %s", FaultProvider},
	NoProgress:         {"the deployment made no progress for %s (step %s): the agent stopped it", FaultProvider},
	Internal:           {"%s", FaultProvider},

	MsgStarting:      {"starting", FaultNone},
	MsgPreflight:     {"checking job and disk", FaultNone},
	MsgDownloading:   {"downloading %s of %s", FaultNone},
	MsgDownloadingN:  {"downloading %s", FaultNone},
	MsgVerifying:     {"verifying", FaultNone},
	MsgWriting:       {"writing %d%%", FaultNone},
	MsgWritingStart:  {"writing", FaultNone},
	MsgConfiguring:   {"configuring", FaultNone},
	MsgDone:          {"done", FaultNone},
	MsgRestarted:     {"the agent restarted: the deployment starts over (attempt %d)", FaultNone},
	MsgWaitingAgent:  {"waiting for the server's agent", FaultNone},
	MsgStepPartition: {"moving backup GPT to the end of the disk", FaultNone},
	MsgStepBoot:      {"checking how the image boots", FaultNone},

	WarnOtherConfigDrive: {"%s also carries a filesystem labelled config-2; cloud-init may read it instead of the new ConfigDrive", FaultNone},
	WarnNoLegacyBoot:     {"no boot code in the MBR: a legacy BIOS server cannot boot this image", FaultNone},
	WarnNoESP:            {"no EFI System Partition: a UEFI server cannot boot this image", FaultNone},
	WarnESPUnreadable:    {"EFI System Partition %d is not a readable FAT filesystem: %s", FaultNone},
	WarnNoRemovablePath:  {"the EFI System Partition has no %s: UEFI firmware needs a boot entry (efiBootloaderPath)", FaultNone},
	WarnRereadDeferred:   {"partition table written, kernel re-read deferred: reboot applies it", FaultNone},
	WarnProtectiveMBR:    {"the image's protective MBR was repaired: %s", FaultNone},
	WarnImageNote:        {"%s", FaultNone},
	WarnNoBootEntry:      {"no UEFI boot entry was written for the deployed disk (%s): the firmware's default loader path must boot it", FaultNone},
	WarnDownloadRetry:    {"the download was interrupted at %s: resuming (retry %d of %d)", FaultNone},

	APITaskRunning:     {"Task %d of type %s with status %s is already running on server %s", FaultCustomer},
	APINotFound:        {"The requested object (%s) does not exist", FaultCustomer},
	APIInvalidSig:      {"Invalid signature", FaultCustomer},
	APIOutOfTime:       {"Query out of time", FaultCustomer},
	APIInvalidKey:      {"Invalid application key", FaultCustomer},
	APIInvalidCred:     {"This credential does not exist", FaultCustomer},
	APINotAuthed:       {"You must login first", FaultCustomer},
	APIBodyTooLarge:    {"request body is larger than %d bytes", FaultCustomer},
	APIBadRequest:      {"%s", FaultCustomer},
	APIMethod:          {"method %s is not allowed here", FaultCustomer},
	APIInternal:        {"internal server error", FaultProvider},
	APINoDeployment:    {"no deployment on server %s", FaultCustomer},
	APICSRF:            {"missing or invalid CSRF token: reload the page", FaultCustomer},
	APIAgentNotAllowed: {"this agent token does not belong to server %s", FaultCustomer},
	APIPickupTimeout:   {"the server's agent did not pick up the deployment within %s", FaultProvider},
	MsgCancelled:       {"the deployment was cancelled: its status was erased", FaultNone},
	APIStaleAttempt:    {"attempt %d is not the deployment's current attempt %d", FaultCustomer},
	APIDeploymentGone:  {"deployment %d has ended or was cancelled", FaultCustomer},
	APIBadToken:        {"Invalid token", FaultCustomer},
	MsgTaskReinstall:   {"Start bare metal OS installation", FaultNone},
	MsgBootHarddisk:    {"Boot from the hard disk", FaultNone},
	MsgBootRescue:      {"Rescue: the byoi agent", FaultNone},
	APIBadParam:        {"parameter %s must be %s", FaultCustomer},

	// issue 26
	CheckUEFINoESP:        {"the server boots by UEFI and the image has no EFI System Partition: add a FAT partition of type EF00 (GPT) or 0xEF (MBR) holding the loader at \\EFI\\BOOT\\BOOTX64.EFI", FaultCustomer},
	CheckUEFINoLoader:     {"the server boots by UEFI and EFI System Partition %d holds no loader (%s): add \\EFI\\BOOT\\BOOTX64.EFI, or the loader named by efiBootloaderPath", FaultCustomer},
	CheckBIOSNoBootCode:   {"the server boots by legacy BIOS and the image has no boot code in its MBR: install a BIOS boot loader (grub-install --target=i386-pc; on a GPT disk with a 1 MiB BIOS boot partition of type EF02)", FaultCustomer},
	CheckBIOSNoCoreSpace:  {"the server boots by legacy BIOS and the GPT image has MBR boot code but neither a BIOS boot partition (type EF02) for GRUB's core image nor a partition marked legacy BIOS bootable: it may not boot", FaultCustomer},
	CheckNoLinuxRoot:      {"no Linux root filesystem was found in the image (%s): its system was not checked", FaultCustomer},
	CheckNotExamined:      {"%s was not examined: %s", FaultCustomer},
	CheckNoKernel:         {"no kernel was found: no boot entry in grub.cfg or loader/entries, and no /boot/vmlinuz-*", FaultCustomer},
	CheckKernelMissing:    {"the default boot entry's kernel %s is not in the image", FaultCustomer},
	CheckInitrdMissing:    {"the default boot entry's initramfs %s is not in the image", FaultCustomer},
	CheckRootUnresolved:   {"the kernel command line's root=%s names no filesystem of the image: the system will wait for its root and stop", FaultCustomer},
	CheckRootDevName:      {"the kernel command line's root=%s names a disk by its kernel name, which differs between machines: use root=UUID=", FaultCustomer},
	CheckDiskDriverAbsent: {"the initramfs %s lacks %s, the driver of this server's disk controller, and kernel %s does not have it built in: the root disk will not be found (rebuild the initramfs with it, e.g. MODULES=most in initramfs.conf, or dracut --no-hostonly)", FaultCustomer},
	CheckModuleDepAbsent:  {"the initramfs %s lacks %s, which %s needs, and kernel %s does not have it built in: the root disk will not be found", FaultCustomer},
	CheckRootFSModule:     {"the initramfs %s lacks %s, the module of the root filesystem (%s), and kernel %s does not have it built in: the root will not be mounted", FaultCustomer},
	CheckNoInitramfs:      {"the boot entry has no initramfs and kernel %[2]s does not have %[1]s built in: the root disk will not be found", FaultCustomer},
	CheckNICDriverAbsent:  {"the driver %s of network interface %s is neither in /lib/modules/%s nor built into the kernel: the interface will not come up", FaultCustomer},
	CheckFstabDevName:     {"/etc/fstab line %d names %s by its kernel name, which differs between machines: use UUID= or LABEL=", FaultCustomer},
	CheckFstabUnresolved:  {"/etc/fstab line %d: %s (for %s) is no filesystem of the image; the entry has nofail, so only that mount is lost", FaultCustomer},
	CheckFstabNoFail:      {"/etc/fstab line %d: %s (for %s) is no filesystem of the image and the entry has no nofail: unless the server has it, systemd stops the boot in emergency mode", FaultCustomer},
	CheckCloudInitMissing: {"a ConfigDrive is requested but cloud-init is not installed in the image: the hostname, SSH keys and user data will not be applied", FaultCustomer},
	CheckCloudInitOff:     {"a ConfigDrive is requested but cloud-init will not run (%s): the ConfigDrive will be ignored", FaultCustomer},
	CheckDatasourceList:   {"a ConfigDrive is requested but cloud-init's datasource_list is %s, without ConfigDrive: the ConfigDrive will be ignored (add ConfigDrive to the list)", FaultCustomer},
	CheckNetKernelName:    {"%s binds the network configuration to %s, but the image names interfaces predictably (enp1s0, eno1): that name will not exist (match the MAC address, or boot with net.ifnames=0)", FaultCustomer},
	CheckNetForeignMAC:    {"%s binds the network configuration to MAC %s, which no interface of this server has (it has %s)", FaultCustomer},
	ImageChecksValue:      {"imageChecks must be \"strict\", \"off\" or absent, got %s", FaultCustomer},
	NetworkDataValue:      {"networkData must be \"off\" or absent, got %s", FaultCustomer},
	WarnNoBootNIC:         {"the ConfigDrive has no network_data.json: the NIC the server booted from is not known (no BOOTIF= on the rescue's kernel command line and no single NIC that is up); the image's own network configuration applies", FaultNone},
	CheckStrict:           {"the job asks for strict image checks (imageChecks: strict) and the image has a problem: %s", FaultCustomer},
	CheckMore:             {"%s; and %d more: %s", FaultCustomer},

	// issue 25
	PowerNoAnswer:    {"the server's BMC does not answer (%s)", FaultProvider},
	PowerCredentials: {"the server's BMC refused byoi's credentials (%s)", FaultProvider},
	PowerTimeout:     {"the server's BMC did not complete %s within %s", FaultProvider},
	PowerUnsupported: {"the server's BMC does not support %s: %s", FaultProvider},
	PowerFailed:      {"the server's BMC failed %s: %s", FaultProvider},
	WarnBootOverride: {"the server's BMC refused the one-time boot from the network (%s): the server starts in its own boot order", FaultNone},

	// issue 25, wiring
	MsgPowerRebooted:     {"byoi-api %s the server through its BMC (%s) to boot it from the network", FaultNone},
	MsgPowerAgentWaiting: {"the server's rescue agent is already running: the deployment starts without a reboot", FaultNone},
	MsgPowerByHand:       {"the server has no power driver: it waits to be rebooted into rescue by hand", FaultNone},
	MsgPowerAbandoned:    {"byoi-api stopped %d times while powering the server through its BMC: the power action was abandoned, ask your provider to look at the server", FaultProvider},
	MsgRescueTimeout:     {"the server did not boot into rescue within %s", FaultProvider},
	MsgBooted:            {"booted: the new system phoned home %s after done", FaultNone},
	MsgNoSignOfLife:      {"no sign of life from the new system %s after done", FaultNone},
	MsgPowerRebooting:    {"byoi-api is rebooting the server through its BMC", FaultNone},

	// issue 22
	APIAttemptsExhausted: {"the deployment was started %d times and never finished: the server's agent restarted during each attempt (see the status history); post it again, or ask your provider to look at the server", FaultProvider},
	APIReplayed:          {"this signed request was already received (a replay is refused): sign every request anew; two identical requests signed within the same second are refused too", FaultCustomer},
	APIBusy:              {"the API is busy receiving other requests: retry in a few seconds", FaultProvider},
	APIBodyTimeout:       {"the request body did not arrive within %s", FaultCustomer},
	APICredentialInvalid: {"This credential is not valid", FaultCustomer},
	APIBootRateLimited:   {"too many network boot requests from this address: retry in %d s", FaultCustomer},
	// issue 24
	StorageHardwareRaid:  {"storage.hardwareRaid is not supported with a BYOI image: byoi writes the image as it is onto the first disk of the disk group and configures no hardware RAID (leave hardwareRaid out; an empty list is accepted)", FaultCustomer},
	StoragePartitioning:  {"storage.partitioning is not supported with a BYOI image: the image brings its own partition table (leave partitioning out; an empty object is accepted)", FaultCustomer},
	CustomizationUnused:  {"customizations.%s is not used with %s, which installs your own image: %s", FaultCustomer},
	MetadataTwice:        {"ConfigDrive metadata key %s is given in both %s and %s", FaultCustomer},
	MsgImageTypeDetected: {"no image type given: detected %s from the image's first bytes (%s)", FaultNone},
	ImageTypeUndetected:  {"no image type given, and the image's first bytes are neither qcow2, OVA, a disk image with a partition table nor a compressed one (they look like: %s): give the image type (qcow2, raw or ova)", FaultCustomer},
	APINoFeature:         {"this server's agent (version %s) cannot detect the image type: give customizations.imageType (qcow2, raw or ova), or boot the server into a newer rescue system", FaultCustomer},
	MsgRebootByHand:      {"Waiting for the server to be rebooted by hand: byoi-api has no power driver for it", FaultNone},
	MsgRebootSeen:        {"Reboot seen: the server booted from the network or its rescue agent started", FaultNone},

	// issue 22 point 12
	InterruptedStep: {"the deployment was interrupted during its %s step", FaultProvider},
	// issue 28
	WarnImageCacheWait:     {"waiting for the control plane's image cache (busy or interrupted): asking it again (%d of %d)", FaultNone},
	WarnImageCacheFallback: {"the control plane's image cache could not serve the image: downloading it from its own URL from %s on", FaultNone},
	CacheNotServed:         {"the image cache does not serve this image: download it from its own URL", FaultProvider},
	CacheBusy:              {"the image cache is busy with this image: ask again in %d s", FaultProvider},
}

// imageCheckCodes are the codes of issue 26's checks (package imagecheck):
// its tests trigger every one.
var imageCheckCodes = map[Code]bool{
	CheckUEFINoESP: true, CheckUEFINoLoader: true, CheckBIOSNoBootCode: true, CheckBIOSNoCoreSpace: true,
	CheckNoLinuxRoot: true, CheckNotExamined: true, CheckNoKernel: true, CheckKernelMissing: true,
	CheckInitrdMissing: true, CheckRootUnresolved: true, CheckRootDevName: true, CheckDiskDriverAbsent: true,
	CheckModuleDepAbsent: true, CheckRootFSModule: true,
	CheckNoInitramfs: true, CheckNICDriverAbsent: true, CheckFstabDevName: true, CheckFstabUnresolved: true,
	CheckFstabNoFail: true, CheckCloudInitMissing: true, CheckCloudInitOff: true, CheckDatasourceList: true,
	CheckNetKernelName: true, CheckNetForeignMAC: true,
}

// IsImageCheckCode reports whether c is one of the image checks' findings
// (issue 26).
func IsImageCheckCode(c Code) bool { return imageCheckCodes[c] }

// Text formats the message of code c with args. An unknown code (a bug)
// gives the code itself, so nothing is lost.
func Text(c Code, args ...any) string {
	e, ok := catalog[c]
	if !ok {
		return string(c)
	}
	if len(args) == 0 {
		// Formats without verbs are returned as is ("%%" never appears
		// in those).
		return e.format
	}
	return fmt.Sprintf(e.format, args...)
}

// FaultOf tells whose fault a failure with code c is.
func FaultOf(c Code) Fault {
	if e, ok := catalog[c]; ok {
		return e.fault
	}
	return FaultProvider
}

// Codes lists every code of the catalog (for tests and documentation).
func Codes() []Code {
	out := make([]Code, 0, len(catalog))
	for c := range catalog {
		out = append(out, c)
	}
	return out
}

// Format is the fmt format of code c ("" when unknown): for tests that
// check no catalog text is written elsewhere.
func Format(c Code) string { return catalog[c].format }

// Coded is implemented by every error that carries a catalog code: its
// Error() is the customer-facing text (the catalog message, then the cause
// when there is one).
type Coded interface {
	error
	MessageCode() Code
}

// Error is a customer-facing error built from the catalog: Code with Args,
// then the cause Err appended. Lower packages may return their own typed
// errors instead, as long as they implement Coded.
type Error struct {
	Code Code
	Args []any
	Err  error
}

// Errorf returns an *Error for code with args and no cause.
func Errorf(code Code, args ...any) *Error { return &Error{Code: code, Args: args} }

// Wrap returns an *Error for code with args whose cause is err.
func Wrap(err error, code Code, args ...any) *Error { return &Error{Code: code, Args: args, Err: err} }

func (e *Error) Error() string {
	msg := Text(e.Code, e.Args...)
	if e.Err != nil {
		msg += " " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// MessageCode returns the catalog code.
func (e *Error) MessageCode() Code { return e.Code }

// Describe is the one mapping from an error to what the customer sees: the
// code and text of the outermost Coded error in err's chain. A cancelled
// context is Interrupted; anything else is Internal with the error's text
// (lower packages keep secrets out of their errors).
func Describe(err error) (Code, string) {
	if err == nil {
		return "", ""
	}
	var c Coded
	if errors.As(err, &c) {
		return c.MessageCode(), c.Error()
	}
	if errors.Is(err, context.Canceled) {
		return Interrupted, Text(Interrupted)
	}
	return Internal, err.Error()
}

// Message is Describe's text alone.
func Message(err error) string {
	_, m := Describe(err)
	return m
}
