package pagestore

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codec is how a chunk's payload is compressed. The codec is recorded per
// chunk, so one store can hold chunks of several codecs; a chunk's address
// does not depend on it.
type Codec uint8

// Codecs.
const (
	// CodecRaw stores the bytes as they are. Used when compression would
	// not make a chunk smaller.
	CodecRaw Codec = 0
	// CodecZstd is zstd at its fastest level: the best ratio per decode
	// microsecond of the codecs measured (docs/PERFORMANCE.md).
	CodecZstd Codec = 1
	// CodecS2 is klauspost's s2 (better mode): a lower ratio but 3–4× faster
	// to decode, a measured alternative for the fault path.
	CodecS2 Codec = 2
)

func (c Codec) String() string {
	switch c {
	case CodecRaw:
		return "raw"
	case CodecZstd:
		return "zstd"
	case CodecS2:
		return "s2"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// ParseCodec parses "zstd", "s2" or "raw".
func ParseCodec(s string) (Codec, error) {
	switch strings.ToLower(s) {
	case "zstd", "":
		return CodecZstd, nil
	case "s2":
		return CodecS2, nil
	case "raw", "none":
		return CodecRaw, nil
	}
	return 0, fmt.Errorf("codec %q: want zstd, s2 or raw", s)
}

// codecs holds the reusable zstd encoder and decoder. Both are safe for
// concurrent EncodeAll/DecodeAll calls.
type codecs struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

func newCodecs() (*codecs, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		// The record's CRC-32C already covers the payload.
		zstd.WithEncoderCRC(false),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithDecoderMaxMemory(maxChunk*2))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &codecs{enc: enc, dec: dec}, nil
}

func (c *codecs) close() {
	c.enc.Close()
	c.dec.Close()
}

// compress appends src compressed with codec to dst. It falls back to
// CodecRaw when compression does not shrink src.
func (c *codecs) compress(dst, src []byte, codec Codec) ([]byte, Codec) {
	start := len(dst)
	switch codec {
	case CodecZstd:
		dst = c.enc.EncodeAll(src, dst)
	case CodecS2:
		dst = append(dst, s2.EncodeBetter(nil, src)...)
	default:
		return append(dst, src...), CodecRaw
	}
	if len(dst)-start >= len(src) {
		return append(dst[:start], src...), CodecRaw
	}
	return dst, codec
}

// decompress appends the decoded payload to dst.
func (c *codecs) decompress(dst, payload []byte, codec Codec, ulen int) ([]byte, error) {
	switch codec {
	case CodecRaw:
		return append(dst, payload...), nil
	case CodecZstd:
		return c.dec.DecodeAll(payload, dst)
	case CodecS2:
		n, err := s2.DecodedLen(payload)
		if err != nil {
			return nil, err
		}
		if n != ulen {
			return nil, fmt.Errorf("s2 block decodes to %d bytes, want %d", n, ulen)
		}
		out, err := s2.Decode(dst[len(dst):cap(dst)], payload)
		if err != nil {
			return nil, err
		}
		return append(dst, out...), nil
	}
	return nil, fmt.Errorf("unknown codec %d", codec)
}
