package deploy_test

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// dzhookVarPattern finds DZHOOK_… names in any text, not as the tail of a
// longer name (DB_DZHOOK_PASSWORD is not one).
var dzhookVarPattern = regexp.MustCompile(`(?:^|[^A-Za-z0-9_])(DZHOOK_[A-Z0-9_]*[A-Z0-9])`)

// TestEveryDzhookVariableExists scans every file under deploy/ (the
// README, SQL comments, manifests, examples) for DZHOOK_… names: each
// must be one dzhook reads.
func TestEveryDzhookVariableExists(t *testing.T) {
	for _, f := range deployFiles(t) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		for n, line := range strings.Split(readFile(t, filepath.Join(env.deploy, f)), "\n") {
			for _, m := range dzhookVarPattern.FindAllStringSubmatch(line, -1) {
				checkDzhookVar(t, fmt.Sprintf("deploy/%s:%d", f, n+1), m[1])
			}
		}
	}
}

// TestReadmeCommands checks every dzhook command line in the shell blocks
// of deploy/README.md: the subcommand exists and takes the flags shown.
func TestReadmeCommands(t *testing.T) {
	checked := 0
	for _, block := range shellBlocks(readFile(t, filepath.Join(env.deploy, "README.md"))) {
		for _, cmdline := range block.lines {
			words, err := shellWords(cmdline.text)
			if err != nil {
				t.Errorf("deploy/README.md:%d: %v", cmdline.line, err)
				continue
			}
			for i := 0; i+1 < len(words); i++ {
				if filepath.Base(words[i]) != "dzhook" {
					continue
				}
				sub := words[i+1]
				// dzhook as a service, container or user name is followed
				// by a flag, another name, or nothing: only a lowercase
				// word not naming dzhook again is a subcommand.
				if !regexp.MustCompile(`^[a-z]+$`).MatchString(sub) || sub == "dzhook" {
					continue
				}
				where := fmt.Sprintf("deploy/README.md:%d", cmdline.line)
				known := subcommandFlags(t, sub)
				for _, a := range words[i+2:] {
					if a == "&&" || a == "||" || a == ";" || a == "|" || a == ">" {
						break
					}
					if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
						continue
					}
					name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
					if _, ok := known[name]; !ok {
						t.Errorf("%s: dzhook %s has no flag -%s", where, sub, name)
					}
				}
				checked++
			}
		}
	}
	if checked == 0 {
		t.Error("deploy/README.md shows no dzhook command in a shell block")
	}
}

// shellLine is one command of a README shell block, continuations joined.
type shellLine struct {
	line int
	text string
}

type shellBlock struct {
	lines []shellLine
}

// shellBlocks returns the ```sh, ```bash, ```shell and ```console blocks
// of a Markdown text, without comments and prompts.
func shellBlocks(md string) []shellBlock {
	var blocks []shellBlock
	var cur *shellBlock
	var pending strings.Builder
	pendingLine := 0
	for n, raw := range strings.Split(md, "\n") {
		trimmed := strings.TrimSpace(raw)
		if strings.HasPrefix(trimmed, "```") {
			if cur != nil {
				blocks = append(blocks, *cur)
				cur = nil
				continue
			}
			switch strings.TrimPrefix(trimmed, "```") {
			case "sh", "bash", "shell", "console":
				cur = &shellBlock{}
			}
			continue
		}
		if cur == nil || trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		trimmed = strings.TrimPrefix(trimmed, "$ ")
		if pending.Len() == 0 {
			pendingLine = n + 1
		}
		if body, ok := strings.CutSuffix(trimmed, `\`); ok {
			pending.WriteString(body + " ")
			continue
		}
		pending.WriteString(trimmed)
		cur.lines = append(cur.lines, shellLine{line: pendingLine, text: pending.String()})
		pending.Reset()
	}
	return blocks
}

// dummyFor returns a value that passes validation for a ${NAME} a
// configuration references: URLs and DSNs by their name, a whsec_ secret
// (valid for Standard Webhooks too) otherwise.
func dummyFor(name string) string {
	switch {
	case strings.HasSuffix(name, "_URL"):
		return "https://hooks.example.com/dummy"
	case strings.HasSuffix(name, "_DSN"):
		return "postgres://dummy@127.0.0.1:5432/dummy?sslmode=disable"
	}
	return "whsec_ZHVtbXktc2VjcmV0LWZvci12YWxpZGF0aW9u"
}

// TestShippedConfigsValidate runs `dzhook validate` on every dzhook
// configuration under deploy/, files and ConfigMap keys alike, with the
// variables it references set to dummy values, plus the DSN and admin
// token that every manifest passes as DZHOOK_SOURCE_DSN and
// DZHOOK_ADMIN_TOKEN. The manifest tests check each one again with the
// exact environment its manifest gives it.
func TestShippedConfigsValidate(t *testing.T) {
	configs := make(map[string]string) // where → YAML
	for _, f := range deployFiles(t) {
		if !strings.HasSuffix(f, ".yaml") && !strings.HasSuffix(f, ".yml") {
			continue
		}
		if strings.HasPrefix(f, "helm/") && strings.Contains(f, "/templates/") {
			continue // Helm templates are YAML once rendered: their renders are under helm/charttest/testdata
		}
		for i, doc := range decodeYAMLDocs(t, filepath.Join(env.deploy, f)) {
			if isDzhookConfig(doc) {
				configs[fmt.Sprintf("deploy/%s", f)] = readFile(t, filepath.Join(env.deploy, f))
			}
			if str(doc, "kind") == "ConfigMap" {
				for key, v := range asMap(get(doc, "data")) {
					var inner obj
					if yaml.Unmarshal([]byte(fmt.Sprint(v)), &inner) == nil && isDzhookConfig(inner) {
						configs[fmt.Sprintf("deploy/%s document %d, ConfigMap %s key %s", f, i+1, str(doc, "metadata", "name"), key)] = fmt.Sprint(v)
					}
				}
			}
		}
	}
	if len(configs) < 2 {
		t.Fatalf("found %d dzhook configurations under deploy/, want at least compose's and Kubernetes'", len(configs))
	}
	for _, where := range sortedKeys(configs) {
		environ := map[string]string{
			"DZHOOK_SOURCE_DSN":  dummyFor("SOURCE_DSN"),
			"DZHOOK_ADMIN_TOKEN": "dummy-admin-token",
		}
		for name := range configRefs(configs[where]) {
			environ[name] = dummyFor(name)
		}
		validate(t, where, configs[where], environ)
	}
}

// isDzhookConfig reports whether a YAML mapping looks like a dzhook
// configuration rather than a manifest.
func isDzhookConfig(doc obj) bool {
	if doc == nil || doc["apiVersion"] != nil || doc["services"] != nil || doc["kind"] != nil {
		return false
	}
	for _, k := range []string{"source", "subscriptions", "journal", "delivery", "admin"} {
		if _, ok := doc[k]; ok {
			return true
		}
	}
	return false
}
