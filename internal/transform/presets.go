package transform

// presets are the built-in transforms of the formats: each turns an
// envelope into the body its destination's incoming webhooks accept (a
// value encoding/json writes). They never skip a delivery and never fail:
// whatever the data holds, there is a message to send (preset_message.go).
var presets = map[string]func(*Envelope) (any, error){
	FormatSlack:   slack,
	FormatTeams:   teams,
	FormatDiscord: discord,
}
