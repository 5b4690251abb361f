package job

import "strings"

// Which part of byoi shows each message: the job spec's validation (an
// HTTP 400 on the API, a refusal before anything starts), the control
// plane (its API errors and the status texts it writes itself), or the
// deployment (the agent's pipeline: errors, progress and warnings). Each
// part's tests trigger every code of its group.

// jobSpecCodes are the codes of Parse, Validate and ParseHeaderFlag.
var jobSpecCodes = map[Code]bool{
	JobTooLarge: true, JobNotObject: true, JobSyntax: true, JobTruncated: true, JobInvalidJSON: true,
	JobTrailingData: true, JobUnknownField: true, JobDuplicateField: true, JobFieldKind: true, JobFieldType: true,
	JobShape: true, JobMissing: true, OSUnsupported: true, StorageMany: true, ImageChecksValue: true, NetworkDataValue: true,
	URLMissing: true, URLTooLong: true, URLUnparsable: true, URLScheme: true, URLNoHost: true,
	BadImageType: true, ChecksumPair: true, BadChecksumType: true, ChecksumFormat: true, DiskGroupInvalid: true,
	HeadersTooMany: true, HeaderName: true, HeaderValueTooLong: true, HeaderValueControl: true, HeaderDuplicate: true,
	HeaderFlagNoColon: true, HeaderFlagName: true, DescriptionTooLong: true, EFIPathTooLong: true, EFIPathControl: true,
	ConfigDriveTooLarge: true, HostnameTooLong: true, HostnameEmptyLabel: true, HostnameLabelLong: true,
	HostnameLabelStart: true, HostnameLabelEnd: true, HostnameLabelChars: true, UserDataTooLarge: true,
	MetadataTooMany: true, MetadataEmptyKey: true, MetadataKeyTooLong: true, MetadataKeyReserved: true,
	MetadataValueLong: true, MetadataDuplicate: true,
	SSHKeyFieldTooLong: true, SSHKeyTooMany: true, SSHKeyNone: true, SSHKeyControl: true, SSHKeyEmpty: true,
	SSHKeyType: true, SSHKeyNoData: true, SSHKeyBase64: true, SSHKeyTypeMismatch: true, SSHKeyTruncated: true,
	SSHKeyEd25519Size: true, SSHKeyCurve: true, SSHKeyECDSAPoint: true, SSHKeyEmptyInt: true, SSHKeyTrailing: true,
	SSHKeyRSASmall: true,
	// issue 24
	StorageHardwareRaid: true, StoragePartitioning: true, CustomizationUnused: true, MetadataTwice: true,
}

// controlPlaneTexts are the non-API texts only the control plane writes.
var controlPlaneTexts = map[Code]bool{
	AgentSilent: true, MsgRestarted: true, MsgWaitingAgent: true, MsgCancelled: true,
	MsgTaskReinstall: true, MsgBootHarddisk: true, MsgBootRescue: true,
	// issue 24
	MsgRebootByHand: true, MsgRebootSeen: true,
}

// powerCodes are the codes of the power drivers (controlplane/power, issue
// 25); that package's tests trigger each of them.
var powerCodes = map[Code]bool{
	PowerNoAnswer: true, PowerCredentials: true, PowerTimeout: true, PowerUnsupported: true,
	PowerFailed: true, WarnBootOverride: true,
}

// imageCacheCodes are the image cache's (issue 28): the agent's warnings
// when it waits for the cache or falls back to the image's own URL
// (agent/imagecache_test.go triggers them), and the cache's answers to the
// agent (controlplane/imagecache_test.go).
var imageCacheCodes = map[Code]bool{
	WarnImageCacheWait: true, WarnImageCacheFallback: true, CacheNotServed: true, CacheBusy: true,
}

// IsImageCacheCode reports whether c comes from the image cache's path.
func IsImageCacheCode(c Code) bool { return imageCacheCodes[c] }

// powerControlCodes are the texts of the control plane's power actions
// (issue 25, wiring); controlplane's TestPowerCatalog triggers each.
var powerControlCodes = map[Code]bool{
	MsgPowerRebooted: true, MsgPowerAgentWaiting: true, MsgPowerByHand: true, MsgPowerAbandoned: true,
	MsgRescueTimeout: true, MsgBooted: true, MsgNoSignOfLife: true, MsgPowerRebooting: true,
}

// IsPowerControlCode reports whether c is a text of the control plane's
// power actions.
func IsPowerControlCode(c Code) bool { return powerControlCodes[c] }

// IsPowerCode reports whether c comes from a power driver.
func IsPowerCode(c Code) bool { return powerCodes[c] }

// IsJobSpecCode reports whether c comes from the job spec's validation.
func IsJobSpecCode(c Code) bool { return jobSpecCodes[c] }

// IsControlPlaneCode reports whether c is shown by the control plane
// itself (its API's errors and its own status texts).
func IsControlPlaneCode(c Code) bool {
	return strings.HasPrefix(string(c), "API") || controlPlaneTexts[c]
}
