package report

import "testing"

func TestReplaceSection(t *testing.T) {
	sec := "## Some benchmark" + "\n\nnew\n"
	for _, tc := range []struct{ name, doc, want string }{
		{"empty", "", sec},
		{"header only", "# Performance\n", "# Performance\n\n" + sec},
		{"append", "# Performance\n\n## Other\n\nx\n", "# Performance\n\n## Other\n\nx\n\n" + sec},
		{"replace last", "# Performance\n\n" + "## Some benchmark" + "\n\nold\n", "# Performance\n\n" + sec},
		{"replace middle", "# P\n\n" + "## Some benchmark" + "\n\nold\n### sub\nold\n\n## Next\n\ny\n", "# P\n\n" + sec + "\n## Next\n\ny\n"},
		{"heading in code fence", "# P\n\n" + "## Some benchmark" + "\n\n```\n## not a heading\n```\n\n## Next\n", "# P\n\n" + sec + "\n## Next\n"},
	} {
		if got := ReplaceSection(tc.doc, sec); got != tc.want {
			t.Errorf("%s: got\n%q\nwant\n%q", tc.name, got, tc.want)
		}
	}
}
