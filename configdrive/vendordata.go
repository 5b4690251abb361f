package configdrive

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
)

// VendorDataPath is the OpenStack vendor data file (cloud-init
// sources/helpers/openstack.py read_v2: optional, JSON).
const VendorDataPath = "openstack/latest/vendor_data.json"

// maxPhoneHomeURL bounds the phone-home URL (a control plane URL and a
// token).
const maxPhoneHomeURL = 2048

// The vendor data makes cloud-init phone home once, with its phone_home
// module, which Debian's cloud-init (22.4) runs in cloud_final_modules,
// per instance, after the network is up. How cloud-init treats it, from its
// source (cloudinit/stages.py, helpers.py, sources/__init__.py,
// config/cc_phone_home.py):
//
//   - vendor_data.json is a JSON object; cloud-init takes its "cloud-init"
//     member (convert_vendordata) and processes it like user data, with the
//     vendor handlers: its cloud-config becomes vendor-cloud-config.txt.
//     The customer's user_data is not touched: it stays its own file.
//   - Before consuming vendor data, cloud-init merges the configuration
//     without it (user data first) and reads "vendor_data": the customer's
//     "vendor_data: {enabled: false}" in a #cloud-config user data turns
//     the vendor data off entirely (_consume_vendordata).
//   - The configuration the modules see is merged with the user's
//     cloud-config first and the vendor's after it (ConfigMerger: instance
//     configs in the order cloud_config, vendor2, vendor; mergemanydict with
//     the default "no replace" dict merger): a key the user sets wins. A
//     phone_home of the customer's own therefore replaces ours: its url is
//     theirs. (The dict merger recurses, so a "post" or "tries" the customer
//     leaves out is taken from ours; the call goes to their url only.)
//   - phone_home was chosen over a runcmd: a customer's runcmd (common)
//     would replace a vendor runcmd the same way, silently, while a
//     customer's phone_home (rare) is a deliberate choice.
//   - The URL goes through cloud-init's template renderer ("$INSTANCE_ID"
//     is replaced), so it must not hold a '$'.
//
// It posts only instance_id (form-encoded): the instance-id is the
// deployment's UUID, which the control plane can check against the token's
// deployment.
const vendorCloudConfig = `#cloud-config
# byoi: tells the control plane once that this new system has booted. The URL
# holds a single-use token that can do nothing but mark this deployment booted.
# To turn it off, put "vendor_data: {enabled: false}" in your #cloud-config
# user data; a phone_home of your own replaces this one.
phone_home:
  url: "%s"
  post: [instance_id]
  tries: 10
`

// VendorData returns the vendor_data.json that makes cloud-init POST once
// to phoneHomeURL. The URL must be absolute http(s), without userinfo,
// fragment, '$', quotes, backslashes, spaces or control characters (it is
// put in YAML and through cloud-init's templater as it is). Errors never
// repeat the URL: it holds a token.
func VendorData(phoneHomeURL string) ([]byte, error) {
	if err := checkPhoneHomeURL(phoneHomeURL); err != nil {
		return nil, err
	}
	b, err := json.Marshal(map[string]string{"cloud-init": fmt.Sprintf(vendorCloudConfig, phoneHomeURL)})
	if err != nil {
		return nil, fmt.Errorf("configdrive: encode %s: %w", VendorDataPath, err)
	}
	return append(b, '\n'), nil
}

func checkPhoneHomeURL(s string) error {
	bad := func(why string) error { return fmt.Errorf("%w: phone-home URL %s", ErrInvalid, why) }
	if len(s) > maxPhoneHomeURL {
		return bad(fmt.Sprintf("is longer than %d bytes", maxPhoneHomeURL))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		// RFC 3986 characters only, minus those YAML's double quotes
		// or cloud-init's templater would change.
		if c <= 0x20 || c >= 0x7f || strings.IndexByte("\"\\$<>{}|^`", c) >= 0 {
			return bad("holds a character that is not allowed (space, control, non-ASCII or one of \"\\$<>{}|^`)")
		}
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("cannot be parsed")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("must start with http:// or https://")
	case u.Host == "" || u.Hostname() == "":
		return bad("has no host")
	case u.User != nil:
		return bad("must not hold a user name or password")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return bad("must not hold a fragment")
	}
	return nil
}
