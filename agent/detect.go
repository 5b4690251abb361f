package agent

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/job"
)

// Image type detection (issue 24): OVH's reinstall schema does not
// require imageType, so a job may come without one (job.ImageTypeDetect).
// The agent then reads the image's first bytes before the download and
// decides: a qcow2 header is qcow2, a tar archive is an OVA, a partition
// table or a gzip/xz/zstd/bzip2 stream is raw (which decompresses it as
// it streams). Anything else is refused with what the bytes look like.
// The declared type's checks then run as for a declared type: the
// writers check the real format again, so an image that changed between
// the two reads fails as a mismatch, never writes as the wrong type.
//
// The head is read with an HTTP Range request for its first bytes (one
// small extra request, with the job's headers and TLS settings); a server
// that ignores Range gets a plain GET that is closed after the head.

// Features are the agentapi features this agent has (its inventory
// lists them).
func Features() []string { return []string{agentapi.FeatureDetectImageType} }

// detectHead is how much of the image detection reads: enough for every
// signature imaging.Sniff knows (the btrfs superblock at 64 KiB, the ISO
// 9660 descriptor at 32 KiB, a ustar header at 257).
const detectHead = 128 << 10

// detectedType maps what the head is to the job's image type.
func detectedType(f imaging.Format) (string, bool) {
	switch f {
	case imaging.FormatQcow2:
		return job.ImageTypeQcow2, true
	case imaging.FormatTar:
		return job.ImageTypeOVA, true
	case imaging.FormatRaw, imaging.FormatGzip, imaging.FormatXz, imaging.FormatZstd, imaging.FormatBzip2:
		return job.ImageTypeRaw, true
	}
	return "", false
}

// detectImageType sets the job's image type from the image's head when
// the job gave none, and tells the customer what was found.
func (dp *deployment) detectImageType(ctx context.Context) error {
	if dp.job.ImageType != job.ImageTypeDetect {
		return nil
	}
	head, err := dp.readHead(ctx)
	if err != nil {
		return &stepError{job.StepDownload, err}
	}
	f := imaging.Sniff(head)
	typ, ok := detectedType(f)
	if !ok {
		return &stepError{job.StepDownload, job.Errorf(job.ImageTypeUndetected, string(f))}
	}
	dp.job.ImageType, dp.res.Format = typ, typ
	msg := job.Text(job.MsgImageTypeDetected, typ, string(f))
	dp.log.Info(msg)
	dp.emit(job.Event{Step: job.StepDownload, Kind: job.KindInfo, Code: job.MsgImageTypeDetected, Message: msg})
	return nil
}

// readHead reads up to detectHead bytes of the image.
func (dp *deployment) readHead(ctx context.Context) ([]byte, error) {
	fo := dp.Fetch
	tr, err := fetch.NewTransport(fo.CACertPEM, fo.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	defer tr.CloseIdleConnections()
	ra, err := fetch.OpenRange(ctx, dp.job.ImageURL, fetch.RangeOptions{Client: &http.Client{Transport: tr}, Headers: dp.job.Headers,
		BlockSize: detectHead, CacheBlocks: 1, MaxBytes: detectHead})
	if err == nil {
		head := make([]byte, min(detectHead, ra.Size()))
		n, err := ra.ReadAt(head, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, job.Wrap(err, job.DownloadFailed, job.RedactURL(dp.job.ImageURL))
		}
		return head[:n], nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// No ranges (or the range read failed): the head of a plain download,
	// which reports its own errors in the download's words.
	fo.Headers = dp.job.Headers
	if fo.Logger == nil {
		fo.Logger = dp.log
	}
	dp.log.Info("image type detection: no range read, reading the head of a download", "err", err)
	st, err := fetch.Open(ctx, dp.job.ImageURL, fo)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	head := make([]byte, detectHead)
	n, err := io.ReadFull(st, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return head[:n], nil
}
