package config

import "testing"

func TestAdminListen(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"", "127.0.0.1:9464"}, // absent: the default
		{"admin: {}\n", "127.0.0.1:9464"},
		{"admin:\n  listen:\n", "127.0.0.1:9464"}, // null: the default
		{"admin:\n  listen: \"\"\n", ""},          // off
		{"admin:\n  listen: 0.0.0.0:9100\n", "0.0.0.0:9100"},
	} {
		c := mustParse(t, minimal+tc.yaml, testEnv())
		if c.Admin.Listen != tc.want {
			t.Errorf("%q: admin.listen %q, want %q", tc.yaml, c.Admin.Listen, tc.want)
		}
	}
}
