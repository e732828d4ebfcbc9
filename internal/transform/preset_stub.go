package transform

// TODO(presets): the destinations' shapes.
func slack(e *Envelope) (any, error)   { return map[string]any{"text": e.Event + " " + e.ID}, nil }
func teams(e *Envelope) (any, error)   { return map[string]any{"text": e.Event + " " + e.ID}, nil }
func discord(e *Envelope) (any, error) { return map[string]any{"content": e.Event + " " + e.ID}, nil }
