package transform

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// decodeJSON reads exactly one JSON value into v, numbers as json.Number.
func decodeJSON(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("more than one JSON value")
	}
	return nil
}

type jsonBuffer struct{ bytes.Buffer }

func (b *jsonBuffer) bytes() []byte { return b.Buffer.Bytes() }
