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

// IsPowerCode reports whether c comes from a power driver.
func IsPowerCode(c Code) bool { return powerCodes[c] }

// IsJobSpecCode reports whether c comes from the job spec's validation.
func IsJobSpecCode(c Code) bool { return jobSpecCodes[c] }

// IsControlPlaneCode reports whether c is shown by the control plane
// itself (its API's errors and its own status texts).
func IsControlPlaneCode(c Code) bool {
	return strings.HasPrefix(string(c), "API") || controlPlaneTexts[c]
}
