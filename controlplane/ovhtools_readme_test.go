package controlplane_test

import (
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The README's examples for OVH's tools (issue 24), checked against what
// the tools do.

func readmeBlock(t *testing.T, marker, lang string) string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- " + regexp.QuoteMeta(marker) + " -->\n```" + lang + "\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatalf("README has no %q block after <!-- %s -->", lang, marker)
	}
	return string(m[1])
}

// hclLeaves flattens an HCL block's `key = value` lines by their block
// path ("customizations.image_url"); strings unquoted, comments dropped.
func hclLeaves(t *testing.T, src string) map[string]string {
	t.Helper()
	out := map[string]string{}
	var stack []string
	attr := regexp.MustCompile(`^(\w+)\s*=\s*(.*?)\s*(#.*)?$`)
	for _, line := range strings.Split(src, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case line == "}":
			stack = stack[:len(stack)-1]
		case strings.HasSuffix(line, "{"):
			stack = append(stack, strings.Fields(line)[0])
		default:
			m := attr.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("unparsed HCL line %q", line)
			}
			v := m[2]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			out[strings.Join(append(stack[1:], m[1]), ".")] = v
		}
	}
	return out
}

// jsonLeaves flattens the golden's terraform config (SDK raw config:
// blocks are one-element lists).
func jsonLeaves(prefix string, v any, out map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			jsonLeaves(p, e, out)
		}
	case []any:
		for _, e := range v {
			jsonLeaves(prefix, e, out)
		}
	default:
		out[prefix] = fmt.Sprint(v)
	}
}

// TestREADMETerraformExample: the README's Terraform example is the
// configuration the golden reinstall_task requests were made from
// (TestReplayTerraformProviderOVH replays them), and its provider points
// at a byoi-api URL.
func TestREADMETerraformExample(t *testing.T) {
	src := readmeBlock(t, "terraform example", "hcl")
	i := strings.Index(src, `resource "ovh_dedicated_server_reinstall_task"`)
	if i < 0 {
		t.Fatal("no ovh_dedicated_server_reinstall_task in the example")
	}
	provider, resource := hclLeaves(t, src[:i]), hclLeaves(t, src[i:])
	if ep := provider["endpoint"]; !strings.HasPrefix(ep, "https://") || !strings.HasSuffix(ep, ":8443/1.0") {
		t.Errorf("provider endpoint %q", ep)
	}
	var g terraformGolden
	readGolden(t, "terraform-provider-ovh.json", &g)
	for _, sc := range g.Scenarios {
		if sc.Resource != "ovh_dedicated_server_reinstall_task" || !strings.Contains(sc.Name, "README") {
			continue
		}
		var cfg any
		json.Unmarshal(sc.Config, &cfg)
		want := map[string]string{}
		jsonLeaves("", cfg, want)
		for k, v := range want {
			if resource[k] != v {
				t.Errorf("README %s = %q, the golden's config %q", k, resource[k], v)
			}
		}
		for k := range resource {
			if _, ok := want[k]; !ok {
				t.Errorf("README sets %s, which the golden's config has not", k)
			}
		}
		return
	}
	t.Fatal("the golden has no README scenario")
}

// iniSections parses an ovh.conf as Python's RawConfigParser reads ours.
func iniSections(src string) map[string]map[string]string {
	out := map[string]map[string]string{}
	var cur map[string]string
	for _, line := range strings.Split(src, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			cur = map[string]string{}
			out[line[1:len(line)-1]] = cur
		default:
			if k, v, ok := strings.Cut(line, "="); ok && cur != nil {
				cur[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
	}
	return out
}

// TestREADMEPythonSnippet applies python-ovh 1.2.0's rules (read from its
// source, ovh/client.py and ovh/config.py; it cannot be installed here to
// run) to the README's snippet and ovh.conf: the endpoint name resolves
// through ENDPOINTS to byoi-api's URL, the keys through the configuration
// (OVH_* variables first, then the endpoint's section), the target is
// endpoint + path, the signature is raw_call's; byoi-api accepts it.
func TestREADMEPythonSnippet(t *testing.T) {
	py := readmeBlock(t, "python snippet", "python")
	m := regexp.MustCompile(`ovh\.client\.ENDPOINTS\["(\w+)"\] = "([^"]+)"`).FindStringSubmatch(py)
	if m == nil {
		t.Fatal("the snippet does not add an endpoint to ovh.client.ENDPOINTS")
	}
	name, url := m[1], m[2]
	if !strings.Contains(py, `ovh.Client(endpoint="`+name+`")`) {
		t.Fatalf("the snippet's client does not use endpoint %q", name)
	}
	// The ini block follows the python one.
	readme, _ := os.ReadFile("../README.md")
	after := string(readme)[strings.Index(string(readme), "<!-- python snippet -->"):]
	ini := regexp.MustCompile("(?s)```ini\n(.*?)```").FindStringSubmatch(after)
	if ini == nil {
		t.Fatal("no ovh.conf after the python snippet")
	}
	conf := iniSections(ini[1])
	if conf["default"]["endpoint"] != name {
		t.Fatalf("ovh.conf's [default] endpoint is %q, not %q", conf["default"]["endpoint"], name)
	}
	for _, k := range []string{"application_key", "application_secret", "consumer_key"} {
		if _, ok := conf[name][k]; !ok {
			t.Fatalf("ovh.conf's [%s] has no %s", name, k)
		}
	}
	if !strings.HasSuffix(url, ":8443/1.0") {
		t.Fatalf("the endpoint URL %q is not byoi-api's on a port of its own", url)
	}

	e := newEnv(t)
	cu := e.customer("acme")
	e.server("ns1.example", "acme")
	// The documented URL, pointed at the test's byoi-api: same scheme
	// rules (python-ovh signs the URL it sends to, port included).
	endpoint := strings.Replace(url, "https://byoi-api.example.com:8443", e.url, 1)
	// Configuration: ConfigurationManager.get(section, name) tries
	// OVH_<NAME> first, then the section: the snippet relies on either.
	conf[name]["application_key"], conf[name]["application_secret"], conf[name]["consumer_key"] = cu.cred.ApplicationKey, cu.cred.ApplicationSecret, cu.cred.ConsumerKey
	get := func(key string) string {
		if v := os.Getenv("OVH_" + strings.ToUpper(key)); v != "" {
			return v
		}
		return conf[name][key]
	}
	ak, as, ck := get("application_key"), get("application_secret"), get("consumer_key")
	// time_delta: GET /auth/time, unauthenticated.
	resp, err := http.Get(endpoint + "/auth/time")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	now := strings.TrimSpace(string(b))
	// _get_target: endpoint + path (the /1.0 is dropped for /v1 paths).
	path := "/dedicated/server"
	target := endpoint + path
	// raw_call: "$1$" + sha1(secret+ck+METHOD+target+body+now), body "".
	h := sha1.Sum([]byte(strings.Join([]string{as, ck, "GET", target, "", now}, "+")))
	req, _ := http.NewRequest("GET", target, nil)
	req.Header.Set("X-Ovh-Application", ak)
	req.Header.Set("X-Ovh-Consumer", ck)
	req.Header.Set("X-Ovh-Timestamp", now)
	req.Header.Set("X-Ovh-Signature", "$1$"+hex.EncodeToString(h[:]))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var names []string
	if err := json.NewDecoder(resp.Body).Decode(&names); err != nil || resp.StatusCode != 200 || len(names) != 1 || names[0] != "ns1.example" {
		t.Fatalf("python-ovh's request: %d %v %v", resp.StatusCode, names, err)
	}
}
