// Package devices emulates the legacy devices of a snapfaas microVM: the
// 8250 UART console, the i8042 controller (only to let the guest reset or
// shut down the VM) and the snapshot-point port. Each device keeps all of
// its state in one exported plain struct (State) so that a snapshot can save
// and restore it; behaviour lives in methods on the device.
//
// Devices are reached through a Bus that maps port or address ranges to
// handlers; the vCPU loop dispatches exits to it.
package devices
