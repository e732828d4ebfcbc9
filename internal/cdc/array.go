package cdc

// This file decodes arrays from PostgreSQL's text format. Each element is
// decoded as a scalar of its type would be (decodeFunc): uuid as its
// text, bytea as \x hex, numeric as an exact decimal, json and jsonb as
// raw JSON, float NaN and Infinity as their text. A multi-dimensional
// array stays nested ([]any of []any), as PostgreSQL prints it.
//
// pgtype's ArrayCodec decoded elements to its own Go types (a uuid as
// [16]byte, jsonb as a map, a NaN float that JSON cannot carry) and
// flattened the dimensions; payloads showed Go's debug text.

// maxArrayDims bounds nesting: PostgreSQL allows 6 dimensions (MAXDIM).
const maxArrayDims = 6

// arrayDecoder returns the decode function of an array whose elements
// decode with elem and are separated by delim. A value it cannot parse is
// kept as PostgreSQL printed it.
func arrayDecoder(elem decodeFunc, delim byte) decodeFunc {
	return func(src []byte) any {
		v, ok := parseArray(src, delim, elem)
		if !ok {
			return string(src)
		}
		return v
	}
}

// parseArray parses an array's text: an optional dimension decoration
// ("[0:1]={…}", printed for lower bounds other than 1) and a list in
// braces.
func parseArray(src []byte, delim byte, elem decodeFunc) ([]any, bool) {
	p := arrayParser{src: src, delim: delim, elem: elem}
	if len(src) > 0 && src[0] == '[' {
		for p.i < len(src) && src[p.i] != '=' {
			p.i++
		}
		p.i++ // past '='
	}
	p.space()
	if p.i >= len(src) || src[p.i] != '{' {
		return nil, false
	}
	out, ok := p.list(1)
	if !ok {
		return nil, false
	}
	p.space()
	return out, p.i == len(src)
}

type arrayParser struct {
	src   []byte
	i     int
	delim byte
	elem  decodeFunc
	buf   []byte // a quoted or escaped element's text, unescaped
}

func (p *arrayParser) space() {
	for p.i < len(p.src) && isArraySpace(p.src[p.i]) {
		p.i++
	}
}

func isArraySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// list parses "{…}" at p.i, depth being its dimension.
func (p *arrayParser) list(depth int) ([]any, bool) {
	if depth > maxArrayDims {
		return nil, false
	}
	p.i++ // past '{'
	out := []any{}
	p.space()
	if p.i < len(p.src) && p.src[p.i] == '}' {
		p.i++
		return out, true
	}
	for {
		p.space()
		if p.i >= len(p.src) {
			return nil, false
		}
		switch p.src[p.i] {
		case '{':
			sub, ok := p.list(depth + 1)
			if !ok {
				return nil, false
			}
			out = append(out, sub)
		case '"':
			s, ok := p.quoted()
			if !ok {
				return nil, false
			}
			out = append(out, p.elem(s))
		default:
			s, null, ok := p.unquoted()
			if !ok {
				return nil, false
			}
			if null {
				out = append(out, nil)
			} else {
				out = append(out, p.elem(s))
			}
		}
		p.space()
		if p.i >= len(p.src) {
			return nil, false
		}
		switch p.src[p.i] {
		case p.delim:
			p.i++
		case '}':
			p.i++
			return out, true
		default:
			return nil, false
		}
	}
}

// quoted parses a double-quoted element at p.i; backslash escapes the
// next character.
func (p *arrayParser) quoted() ([]byte, bool) {
	p.i++ // past '"'
	p.buf = p.buf[:0]
	for p.i < len(p.src) {
		c := p.src[p.i]
		p.i++
		switch c {
		case '"':
			return p.buf, true
		case '\\':
			if p.i >= len(p.src) {
				return nil, false
			}
			c = p.src[p.i]
			p.i++
		}
		p.buf = append(p.buf, c)
	}
	return nil, false
}

// unquoted parses an element without quotes at p.i, up to the delimiter
// or the closing brace; the word NULL (any case) is a null element.
func (p *arrayParser) unquoted() (s []byte, null, ok bool) {
	p.buf = p.buf[:0]
	escaped := false
	end := 0 // length of buf without trailing white space
	for p.i < len(p.src) {
		c := p.src[p.i]
		if c == p.delim || c == '}' {
			break
		}
		if c == '{' || c == '"' {
			return nil, false, false
		}
		p.i++
		if c == '\\' {
			if p.i >= len(p.src) {
				return nil, false, false
			}
			c = p.src[p.i]
			p.i++
			escaped = true
			p.buf = append(p.buf, c)
			end = len(p.buf)
			continue
		}
		p.buf = append(p.buf, c)
		if !isArraySpace(c) {
			end = len(p.buf)
		}
	}
	s = p.buf[:end]
	if len(s) == 0 {
		return nil, false, false
	}
	if !escaped && len(s) == 4 && (s[0]|0x20) == 'n' && (s[1]|0x20) == 'u' && (s[2]|0x20) == 'l' && (s[3]|0x20) == 'l' {
		return nil, true, true
	}
	return s, false, true
}
