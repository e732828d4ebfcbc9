package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
)

// EnvPrefix starts every environment override: DZHOOK_SOURCE_DSN sets
// source.dsn, DZHOOK_DELIVERY_ALLOW_INSECURE_HTTP sets
// delivery.allow_insecure_http. Lists take commas:
// DZHOOK_DELIVERY_RETRY_SCHEDULE=0s,10s,1m.
const EnvPrefix = "DZHOOK_"

// Load reads the YAML file at path, lays the DZHOOK_… environment over it,
// expands ${NAME} references, and validates the result. The error lists
// every problem (see Problems).
func Load(path string) (*Config, error) {
	return LoadEnv(path, os.Environ())
}

// LoadEnv is Load with an explicit environment (KEY=value strings), for
// tests and for callers that sanitize the environment.
func LoadEnv(path string, environ []string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("config file %s does not exist (pass --config, or copy config.yaml from the dzhook repository)", path)
		}
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(b, environ)
}

// Parse is Load for YAML already in memory.
func Parse(yamlBytes []byte, environ []string) (*Config, error) {
	k := koanf.New(".")
	if err := k.Load(rawbytes.Provider(yamlBytes), yaml.Parser()); err != nil {
		return nil, fmt.Errorf("config is not valid YAML: %s", yamlError(err))
	}
	// The file as written, before the environment: a DZHOOK_ variable
	// under a section the file wrote as a scalar (delivery: oops) would
	// otherwise replace it with a mapping, and the mistake pass unseen.
	fileRaw := k.Raw()
	keys := envKeys()
	envMap := make(map[string]string, len(environ))
	for _, kv := range environ {
		if name, v, ok := strings.Cut(kv, "="); ok {
			envMap[name] = v
		}
	}
	err := k.Load(env.Provider(".", env.Opt{
		Prefix:        EnvPrefix,
		EnvironFunc:   func() []string { return environ },
		TransformFunc: func(name, v string) (string, any) { return keys[name], v },
	}), nil)
	if err != nil {
		return nil, fmt.Errorf("read environment: %w", err)
	}

	// An empty DZHOOK_… variable is a value: it replaces the file's,
	// which makes "source.dsn: required" a riddle when the file has one.
	// Any other is a value the file does not show: a problem with it
	// names the variable, or the file's (delivery.timeout: 5s) is read
	// for the one refused.
	emptyEnv, fromEnv := make(map[string]string), make(map[string]string)
	for name, v := range envMap {
		if key, ok := keys[name]; ok && v == "" {
			emptyEnv[key] = name
		} else if ok {
			fromEnv[key] = name
		}
	}

	cfg := Default()
	var problems Problems
	d := decoder{
		lookupEnv: func(name string) (string, bool) { v, ok := envMap[name]; return v, ok },
		problems:  &problems,
		refs:      references{},
		literals:  literalScalars(yamlBytes, &problems),
	}
	d.decode("", k.Raw(), reflect.ValueOf(&cfg).Elem())
	checkSections(&problems, "", fileRaw, reflect.TypeOf(cfg))
	cfg.validate(&problems, d.refs)
	for i, p := range problems {
		// A list's item ([1]) came with the list.
		key, _, _ := strings.Cut(p.Path, "[")
		if name, ok := emptyEnv[p.Path]; ok {
			problems[i].Message = fmt.Sprintf("%s is set but empty (an empty variable still replaces the file's value): %s", name, p.Message)
		} else if name, ok := fromEnv[key]; ok {
			// The variable's name only: a message never quotes a
			// secret's value (Problem.Message), wherever it came from.
			problems[i].Message += " (from " + name + ")"
		}
	}
	if err := problems.err(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// envKeys maps every DZHOOK_… variable name to the key it overrides, for
// the scalar and list settings outside subscriptions (which are a list of
// records, set in the file).
func envKeys() map[string]string {
	keys := make(map[string]string)
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("koanf")
			if tag == "" {
				continue
			}
			key := join(prefix, tag)
			switch {
			case f.Type.Kind() == reflect.Struct:
				walk(key, f.Type)
			case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct,
				f.Type.Kind() == reflect.Map:
				// records and maps are set in the file
			default:
				keys[EnvPrefix+strings.ToUpper(strings.ReplaceAll(key, ".", "_"))] = key
			}
		}
	}
	walk("", reflect.TypeFor[Config]())
	return keys
}

// EnvVars returns the names of every DZHOOK_… override, sorted, for the
// documentation and for checks that deployment files only use real ones.
func EnvVars() []string {
	keys := envKeys()
	out := make([]string, 0, len(keys))
	for k := range keys {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// cliEnv are the DZHOOK_… variables the command line reads itself.
var cliEnv = []string{"DZHOOK_CONFIG", "DZHOOK_ADMIN_URL", "DZHOOK_ADMIN_TOKEN", "DZHOOK_LISTEN_SECRET", "DZHOOK_CPUPROFILE", "DZHOOK_MEMPROFILE"}

// UnknownEnv returns a warning for every DZHOOK_… variable that is neither
// a setting nor read by the command line: a misspelt override would
// otherwise be ignored without a word. And one for every setting's
// variable set but empty: it replaces the file's value with nothing, and
// for some settings nothing is a choice (DZHOOK_JOURNAL_DSN= puts the
// journal in the source database, DZHOOK_ADMIN_LISTEN= turns the admin
// server off), typically a deployment's variable whose source is unset.
func UnknownEnv(environ []string) []string {
	known := envKeys()
	names := make([]string, 0, len(known)+len(cliEnv))
	for k := range known {
		names = append(names, k)
	}
	names = append(names, cliEnv...)
	slices.Sort(names)
	var out []string
	for _, kv := range environ {
		name, v, _ := strings.Cut(kv, "=")
		if key, ok := known[name]; ok && v == "" {
			out = append(out, fmt.Sprintf("%s is set but empty: it replaces %s of the file with an empty value (unset it to keep the file's)", name, key))
			continue
		}
		if !strings.HasPrefix(name, EnvPrefix) || slices.Contains(names, name) {
			continue
		}
		msg := name + " is not a dzhook setting and is ignored"
		if s := suggest(name, names); s != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		out = append(out, msg)
	}
	return out
}

// checkSections reports a section of the file (a struct of Config) that
// is not a mapping, unless the decoding reported that path already: it
// did not when the environment set a key under it, which made it one.
func checkSections(ps *Problems, path string, raw any, t reflect.Type) {
	m, ok := raw.(map[string]any)
	if !ok {
		if raw == nil {
			return
		}
		for _, p := range *ps {
			if p.Path == path {
				return
			}
		}
		ps.addDecode(path, "must be a mapping of keys to values, not %s", kindOf(raw))
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("koanf")
		if v, ok := m[tag]; ok && tag != "" && f.Type.Kind() == reflect.Struct && f.Type != durationType {
			checkSections(ps, join(path, tag), v, f.Type)
		}
	}
}

// quotedInYAMLError is what a YAML parser's message quotes of the file.
var quotedInYAMLError = regexp.MustCompile(`'[^']*'|"[^"]*"|` + "`[^`]*`")

// yamlError is a YAML parser's message without the text it quotes from
// the file, which may be a secret: an unquoted secret starting with * is
// read as an alias, and the parser said "unknown anchor '<the rest of
// the secret>' referenced". The line it names stays.
func yamlError(err error) string {
	msg := quotedInYAMLError.ReplaceAllString(err.Error(), "(…)")
	if strings.Contains(msg, "unknown anchor") {
		msg += " (a value starting with * is read as an alias, one starting with & as an anchor: quote it)"
	}
	return msg
}
