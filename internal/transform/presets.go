package transform

// presets are the built-in transforms of the formats: each turns an
// envelope into the body its destination's incoming webhooks accept
// (a value encoding/json writes). A nil result skips the delivery.
var presets = map[string]func(*Envelope) (any, error){
	FormatSlack:   slack,
	FormatTeams:   teams,
	FormatDiscord: discord,
}
