package arch

// A tiny AML encoder (ACPI 6.3 chapter 20, resource descriptors chapter
// 6.4): just what the DSDT needs to describe devices by name, hardware id
// and resources. Each function returns the encoded bytes of one term;
// terms nest by passing bytes in. Integers use the shortest encoding, as
// iasl does, so iasl recompiles a disassembly to the same bytes.

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// AML opcodes and prefixes.
const (
	amlZeroOp     = 0x00
	amlOneOp      = 0x01
	amlNameOp     = 0x08
	amlBytePrefix = 0x0a
	amlWordPrefix = 0x0b
	amlDWordPref  = 0x0c
	amlStringPref = 0x0d
	amlQWordPref  = 0x0e
	amlScopeOp    = 0x10
	amlBufferOp   = 0x11
	amlExtOpPref  = 0x5b
	amlDeviceOp   = 0x82 // after amlExtOpPref
)

// amlPkgLength encodes a PkgLength for n bytes of content after it: the
// length counts the PkgLength's own 1 to 4 bytes. One byte holds up to 63;
// longer ones put the byte count in bits 7-6 of the first byte, the low
// nibble in its bits 3-0 and the rest in the following bytes.
func amlPkgLength(n int) []byte {
	for extra := 0; extra < 4; extra++ {
		total := n + 1 + extra
		if extra == 0 {
			if total <= 0x3f {
				return []byte{byte(total)}
			}
			continue
		}
		if total < 1<<(4+8*extra) {
			b := []byte{byte(extra<<6 | total&0xf)}
			for i := 0; i < extra; i++ {
				b = append(b, byte(total>>(4+8*i)))
			}
			return b
		}
	}
	panic(fmt.Sprintf("AML package of %d bytes", n))
}

// amlNameSeg checks a four-character name segment (A-Z or _ first, then
// A-Z, 0-9 or _) and returns its bytes.
func amlNameSeg(name string) []byte {
	ok := len(name) == 4
	for i := 0; ok && i < 4; i++ {
		c := name[i]
		ok = c == '_' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9'
	}
	if !ok {
		panic(fmt.Sprintf("AML name %q", name))
	}
	return []byte(name)
}

func amlConcat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// amlPkg is op, a PkgLength, then body.
func amlPkg(op []byte, body ...[]byte) []byte {
	c := amlConcat(body...)
	return amlConcat(op, amlPkgLength(len(c)), c)
}

// amlScope is Scope (name) { terms }.
func amlScope(name string, terms ...[]byte) []byte {
	return amlPkg([]byte{amlScopeOp}, append([][]byte{amlNameSeg(name)}, terms...)...)
}

// amlDevice is Device (name) { terms }.
func amlDevice(name string, terms ...[]byte) []byte {
	return amlPkg([]byte{amlExtOpPref, amlDeviceOp}, append([][]byte{amlNameSeg(name)}, terms...)...)
}

// amlName is Name (name, obj).
func amlName(name string, obj []byte) []byte {
	return amlConcat([]byte{amlNameOp}, amlNameSeg(name), obj)
}

// amlString is a string constant.
func amlString(s string) []byte { return amlConcat([]byte{amlStringPref}, []byte(s), []byte{0}) }

// amlInteger is an integer constant in its shortest encoding.
func amlInteger(v uint64) []byte {
	le := binary.LittleEndian
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v <= 0xff:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xffff:
		return le.AppendUint16([]byte{amlWordPrefix}, uint16(v))
	case v <= 0xffffffff:
		return le.AppendUint32([]byte{amlDWordPref}, uint32(v))
	}
	return le.AppendUint64([]byte{amlQWordPref}, v)
}

// amlEISAID is EisaId (id), a PNP id such as "PNP0501" compressed into a
// DWord: three 5-bit letters, then four hex digits, big-endian.
func amlEISAID(id string) []byte {
	prod, err := strconv.ParseUint(id[min(3, len(id)):], 16, 16)
	if len(id) != 7 || err != nil {
		panic(fmt.Sprintf("EISA id %q", id))
	}
	vendor := uint16(id[0]-0x40)<<10 | uint16(id[1]-0x40)<<5 | uint16(id[2]-0x40)
	return []byte{amlDWordPref, byte(vendor >> 8), byte(vendor), byte(prod >> 8), byte(prod)}
}

// amlResources is ResourceTemplate () { descs }: a Buffer holding the
// resource descriptors and an End Tag (checksum 0: "treat as correct").
func amlResources(descs ...[]byte) []byte {
	b := amlConcat(append(descs, []byte{0x79, 0})...)
	return amlPkg([]byte{amlBufferOp}, amlInteger(uint64(len(b))), b)
}

// resIO is IO (Decode16, base, base, 1, n): n ports at base.
func resIO(base uint16, n uint8) []byte {
	return []byte{0x47, 1, byte(base), byte(base >> 8), byte(base), byte(base >> 8), 1, n}
}

// resMemory32Fixed is Memory32Fixed (ReadWrite, base, size).
func resMemory32Fixed(base, size uint32) []byte {
	b := []byte{0x86, 9, 0, 1}
	b = binary.LittleEndian.AppendUint32(b, base)
	return binary.LittleEndian.AppendUint32(b, size)
}

// resInterrupt is Interrupt (ResourceConsumer, Edge, ActiveHigh,
// Exclusive) { gsi }, as Firecracker describes its devices: our devices
// pulse their GSI (KVM_IRQ_LINE 1 then 0, or an irqfd).
func resInterrupt(gsi uint32) []byte {
	const consumer, edge = 1 << 0, 1 << 1
	b := []byte{0x89, 6, 0, consumer | edge, 1}
	return binary.LittleEndian.AppendUint32(b, gsi)
}
