package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/internal/progress"
	"github.com/snapfaas/snapfaas/internal/size"
	"github.com/snapfaas/snapfaas/pagestore"
)

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON"}

func printJSON(c *cli.Context, v any) error {
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:  "ls",
		Usage: "list images and snapshots",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			if _, err := args(c); err != nil {
				return err
			}
			s, release, err := openStore(c, false, false)
			if err != nil {
				return err
			}
			defer release()
			objs, err := s.List()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if objs == nil {
					objs = []pagestore.ObjectInfo{}
				}
				return printJSON(c, objs)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTYPE\tKIND\tSIZE\tSTORED\tRATIO\tPARENT\tCREATED")
			for _, o := range objs {
				kind := string(o.Kind)
				if kind == "" {
					kind = "-"
				}
				parent := o.Parent
				if parent == "" {
					parent = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fx\t%s\t%s\n", o.Name, o.Type, kind,
					progress.Bytes(o.LogicalBytes), progress.Bytes(o.StoredBytes), ratio(o.LogicalBytes, o.StoredBytes),
					parent, o.Created.Local().Format("2006-01-02 15:04"))
			}
			tw.Flush()
			st, err := s.Stats()
			if err == nil {
				fmt.Fprintf(c.App.Writer, "%d images, %d snapshots; %d chunks in %d packs, %s on disk\n", st.Images, st.Snapshots, st.Chunks, st.Packs, progress.Bytes(st.PackBytes))
			}
			return nil
		},
	}
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "describe an image or snapshot: sizes, zero pages, sharing, ratios",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			a, err := args(c, "NAME")
			if err != nil {
				return err
			}
			s, release, err := openStore(c, false, false)
			if err != nil {
				return err
			}
			defer release()
			o, err := s.Inspect(a[0])
			if err != nil {
				return fmt.Errorf("inspect: %w", err)
			}
			if c.Bool("json") {
				return printJSON(c, o)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
			row := func(k, format string, v ...any) { fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{k}, v...)...) }
			row("name", "%s", o.Name)
			row("type", "%s", o.Type)
			if o.Kind != "" {
				row("kind", "%s", o.Kind)
			}
			if len(o.ParentChain) > 0 {
				row("parent chain", "%s", strings.Join(o.ParentChain, " <- "))
			}
			row("created", "%s", o.Created.Local().Format(time.RFC3339))
			row("logical size", "%s (%d bytes, %d pages)", progress.Bytes(o.LogicalBytes), o.LogicalBytes, o.Pages)
			row("chunk size", "%s", progress.Bytes(int64(o.ChunkSize)))
			row("zero pages", "%d (%.1f%%)", o.ZeroPages, pct(o.ZeroPages, o.Pages))
			if o.Type == "snapshot" {
				row("pages in this layer", "%d", o.LayerPages)
				row("working set", "%d pages", o.WorkingSetPages)
			}
			row("chunks", "%d (%d unique, %d shared with other objects)", o.Chunks, o.UniqueChunks, o.SharedChunks)
			row("data", "%s referenced, %s distinct", progress.Bytes(o.ReferencedBytes), progress.Bytes(o.DataBytes))
			row("stored", "%s (%s freed if removed)", progress.Bytes(o.StoredBytes), progress.Bytes(o.UniqueStoredBytes))
			row("compression ratio", "%.2fx", o.CompressionRatio)
			row("dedup ratio", "%.2fx", o.DedupRatio)
			row("codecs", "%s", codecs(o.Codecs))
			return tw.Flush()
		},
	}
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func codecs(m map[string]int) string {
	var parts []string
	for _, k := range []string{"zstd", "s2", "raw"} {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:        "rm",
		Usage:       "remove an image or snapshot",
		ArgsUsage:   "NAME",
		Description: "Removes the name; `snapstore gc` then reclaims the chunks nothing else references.",
		Action: func(c *cli.Context) error {
			a, err := args(c, "NAME")
			if err != nil {
				return err
			}
			s, release, err := openStore(c, true, false)
			if err != nil {
				return err
			}
			defer release()
			info, _ := s.Inspect(a[0])
			kind, err := s.Remove(a[0])
			if err != nil {
				return fmt.Errorf("rm: %w", err)
			}
			freed := ""
			if info != nil {
				freed = fmt.Sprintf("; gc will reclaim %s", progress.Bytes(info.UniqueStoredBytes))
			}
			fmt.Fprintf(c.App.Writer, "removed %s %q%s\n", kind, a[0], freed)
			return nil
		},
	}
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "check every chunk and reference in the store",
		Description: `Reads every chunk record, checks its CRC, decompresses it and compares its
SHA-256 with its address; checks that every object's chunks, parents and
extents resolve. Crash debris and unreferenced chunks are reported as
reclaimable by gc, not as errors. Exits 1 if anything is corrupt.`,
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			if _, err := args(c); err != nil {
				return err
			}
			s, release, err := openStore(c, false, false)
			if err != nil {
				return err
			}
			defer release()
			var bar *progress.Bar
			start := time.Now()
			res, err := s.Verify(c.Context, func(done, total int) {
				if bar == nil && !c.Bool("quiet") {
					bar = progress.NewCount(c.App.ErrWriter, "verify", int64(total))
				}
				bar.Set(int64(done))
			})
			bar.Finish()
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			if c.Bool("json") {
				if err := printJSON(c, res); err != nil {
					return err
				}
			} else {
				for _, p := range res.Problems {
					fmt.Fprintln(c.App.Writer, "CORRUPT", p)
				}
				fmt.Fprintf(c.App.Writer, "verified %d objects, %d chunks (%s) in %s\n", res.Objects, res.Chunks, progress.Bytes(res.Bytes), time.Since(start).Round(time.Millisecond))
				if res.Unreferenced > 0 || res.OrphanBytes > 0 || len(res.OrphanFiles) > 0 {
					fmt.Fprintf(c.App.Writer, "reclaimable by gc: %d unreferenced chunks, %s of crash debris, %d orphan pack files\n", res.Unreferenced, progress.Bytes(res.OrphanBytes), len(res.OrphanFiles))
				}
			}
			if !res.OK() {
				return fmt.Errorf("verify: %d problems: %w", len(res.Problems), pagestore.ErrCorrupt)
			}
			if !c.Bool("json") {
				fmt.Fprintln(c.App.Writer, "OK")
			}
			return nil
		},
	}
}

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "remove unreferenced chunks and reclaim disk space",
		Description: `Marks every chunk reachable from an image, a snapshot or a live lease and
removes the rest; deletes packs left empty, rewrites packs that are mostly
dead, and truncates crash debris.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "report what would be removed; change nothing"},
			&cli.StringFlag{Name: "rewrite-threshold", Value: "0.2", Usage: "rewrite a pack when this `FRACTION` of it is dead"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			if _, err := args(c); err != nil {
				return err
			}
			th, err := strconv.ParseFloat(c.String("rewrite-threshold"), 64)
			if err != nil || th > 1 {
				return usagef("--rewrite-threshold: want a fraction between 0 and 1")
			}
			s, release, err := openStore(c, !c.Bool("dry-run"), false)
			if err != nil {
				return err
			}
			defer release()
			o := pagestore.GCOptions{DryRun: c.Bool("dry-run"), RewriteThreshold: th}
			if !c.Bool("quiet") && !c.Bool("json") {
				o.Progress = func(msg string) { fmt.Fprintln(c.App.ErrWriter, "gc:", msg) }
			}
			res, err := s.GC(c.Context, o)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, res)
			}
			verb := "removed"
			if res.DryRun {
				verb = "would remove"
			}
			fmt.Fprintf(c.App.Writer, "gc: %s %d of %d chunks (%s) and %d stale leases; %d packs deleted, %d rewritten, %d truncated, %d orphan files; %s reclaimed\n",
				verb, res.DeadChunks, res.DeadChunks+res.LiveChunks, progress.Bytes(res.DeadBytes), res.StaleLeases,
				len(res.DeletedPacks), len(res.RewrittenPacks), len(res.TruncatedPacks), len(res.OrphanFiles), progress.Bytes(res.ReclaimedBytes))
			return nil
		},
	}
}

// parseSize parses "64K", "16KiB", "1M", "4096"; "" is 0.
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := size.Parse(s)
	if err == nil && n <= 0 {
		err = fmt.Errorf("size %q must be positive", s)
	}
	return n, err
}
