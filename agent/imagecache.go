package agent

import (
	"slices"
	"strings"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/job"
)

// The control plane's image cache (issue 28), on the agent's side: when an
// assignment names an image path, the image is read there first, with the
// agent token, and from the job's own URL (with the job's headers) at the
// byte reached if the cache cannot serve it. The hooks: runAssignment puts
// the cache in front (cacheFirst), the download step reports the cache's
// waits and the fallback as warning events (sourceEvents).

// cacheSourceName names the cache in logs.
const cacheSourceName = "image cache"

// cacheFirst returns fo with the control plane's image cache as the first
// source, when the assignment names one.
func cacheFirst(fo fetch.Options, c *Client, a *agentapi.Assignment) fetch.Options {
	p := a.ImagePath
	if p == "" || c == nil {
		return fo
	}
	if !strings.HasPrefix(p, agentapi.Prefix+"/") || strings.ContainsAny(p, "?#\\ ") || strings.Contains(p, "..") || strings.Contains(p, "//") {
		return fo // not a path of the agent API: ignore it, use the origin
	}
	fo.Before = append(slices.Clone(fo.Before), fetch.Source{
		Name:    cacheSourceName,
		URL:     c.base + p,
		Headers: []job.Header{{Name: "Authorization", Value: "Bearer " + c.token}},
	})
	return fo
}

// sourceEvents makes the sources' waits (a 503 of the cache: it is still
// waiting for the origin) and a source given up (the download continues
// from the image's own URL) warning events of the download step.
func (dp *deployment) sourceEvents(fo *fetch.Options) {
	fo.Before = slices.Clone(fo.Before)
	for i := range fo.Before {
		if fo.Before[i].OnRetry == nil {
			fo.Before[i].OnRetry = func(retry, max int, _ int64) {
				dp.warn(nil, job.StepDownload, job.WarnImageCacheWait, retry, max)
			}
		}
	}
	if fo.OnSourceFailed == nil {
		fo.OnSourceFailed = func(_ string, off int64) {
			dp.warn(nil, job.StepDownload, job.WarnImageCacheFallback, job.HumanBytes(off))
		}
	}
}
