package controlplane

import (
	"encoding/json"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// checkDetect refuses a job without an image type (OVH's reinstall schema
// does not require imageType: the agent then detects it) for a server
// whose agent told it cannot detect: an agent that posted an inventory
// without agentapi.FeatureDetectImageType would fail the deployment with a
// misleading "Bad format image". A server whose agent has not reported
// yet is given the benefit of the doubt: the rescue system byoi-api boots
// carries the agent of the same release.
func checkDetect(sv store.Server, j *job.Job) error {
	if j.ImageType != job.ImageTypeDetect || sv.Inventory == nil {
		return nil
	}
	var inv agentapi.Inventory
	if json.Unmarshal(sv.Inventory, &inv) != nil || inv.HasFeature(agentapi.FeatureDetectImageType) {
		return nil
	}
	version := inv.AgentVersion
	if version == "" {
		version = "unknown"
	}
	return &job.ValidationError{Code: job.APINoFeature, Field: "customizations.imageType", Message: job.Text(job.APINoFeature, version)}
}
