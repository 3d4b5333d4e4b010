package dkim

import (
	"reflect"
	"testing"

	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// TestHCLDecode checks the struct tags against the documented syntax, the
// way the lead's config loader decodes it (gohcl).
func TestHCLDecode(t *testing.T) {
	const src = `
dkim {
  key "example.com" "mg2026r" { file = "/etc/mailgate/dkim/example.com.mg2026r.pem" }
  key "example.com" "mg2026e" {
    file       = "/etc/mailgate/dkim/example.com.mg2026e.pem"
    subdomains = true
  }
  expiration = "72h"
  unsigned   = "reject"
  headers    = ["From", "To", "Subject"]
  oversign   = ["From"]
}
`
	var doc struct {
		DKIM Config `hcl:"dkim,block"`
	}
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "test.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if diags := gohcl.DecodeBody(f.Body, nil, &doc); diags.HasErrors() {
		t.Fatal(diags)
	}
	exp, unsigned := "72h", "reject"
	want := Config{
		Keys: []KeyConfig{
			{Domain: "example.com", Selector: "mg2026r", File: "/etc/mailgate/dkim/example.com.mg2026r.pem"},
			{Domain: "example.com", Selector: "mg2026e", File: "/etc/mailgate/dkim/example.com.mg2026e.pem", Subdomains: true},
		},
		Expiration: &exp,
		Unsigned:   &unsigned,
		Headers:    []string{"From", "To", "Subject"},
		Oversign:   []string{"From"},
	}
	if !reflect.DeepEqual(doc.DKIM, want) {
		t.Fatalf("decoded %+v\nwant %+v", doc.DKIM, want)
	}
	if err := doc.DKIM.Validate(); err != nil {
		t.Fatal(err)
	}

	t.Run("optional attributes absent", func(t *testing.T) {
		f, _ := hclparse.NewParser().ParseHCL([]byte(`dkim {}`), "empty.hcl")
		var doc struct {
			DKIM Config `hcl:"dkim,block"`
		}
		if diags := gohcl.DecodeBody(f.Body, nil, &doc); diags.HasErrors() {
			t.Fatal(diags)
		}
		if doc.DKIM.Expiration != nil || doc.DKIM.Unsigned != nil || doc.DKIM.Headers != nil || doc.DKIM.Oversign != nil {
			t.Fatalf("defaults not left nil: %+v", doc.DKIM)
		}
	})
}
