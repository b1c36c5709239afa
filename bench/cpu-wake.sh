# Sourced by the load benchmarks. With CPU_WAKE_US set (e.g. CPU_WAKE_US=0), holds a
# CPU wake-up latency request (/dev/cpu_dma_latency, PM QoS) for the rest of the
# script: idle CPUs then wait in a state they leave within that many microseconds.
# On a virtual machine whose idle vCPUs halt (cpuidle "haltpoll" with polling off),
# a halted vCPU runs again only when the host schedules it, which took up to 3 ms
# here even for a real-time thread; with the request at 0 they poll instead.
# The request ends when the script exits (the kernel drops it with the last open
# descriptor). Prints what it did, for the "machine:" line.
hold_cpu_wake_latency() {
    [ -n "${CPU_WAKE_US:-}" ] || return 0
    if ! exec 9>/dev/cpu_dma_latency; then
        echo "CPU_WAKE_US: cannot open /dev/cpu_dma_latency (root needed)" >&2
        exit 1
    fi
    # As text in hex, which the kernel reads as well as a binary 32-bit value.
    printf '0x%x' "$CPU_WAKE_US" >&9
    cpu_wake_note=", CPU wake latency held at ${CPU_WAKE_US} µs (idle driver $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none))"
}
