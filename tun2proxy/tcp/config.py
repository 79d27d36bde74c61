"""Per-connection TCP settings: buffers, timers, options and limits.

Pure: no I/O. Values are validated once, when the config is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["TcpConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpConfig:
    """How every TCP connection of a stack behaves. All times are in seconds.

    Attributes:
        recv_buffer: bytes buffered from the app towards the upstream; the free room is the
            receive window we advertise (backpressure).
        send_buffer: bytes buffered from the upstream towards the app, unacknowledged data
            included; ``send()`` accepts no more than the free room.
        send_buffer_max: how far the send buffer may grow (doubling) while it is what limits
            the flow — a ``send()`` that does not fit while at most a quarter of the buffer
            waits unsent, the rest in flight: the app keeps up and the buffer, not the app's
            window, bounds the rate (Linux grows ``tcp_wmem`` the same way). Never under
            memory pressure (``StackConfig.memory_limit``), which scales it back. 0: no growth.
        window_scale, sack, timestamps: offer/accept these options (RFC 7323, RFC 2018).
        initial_rto, min_rto, max_rto: RFC 6298 timer bounds.
        max_retries: data retransmissions before the connection is reset (R2).
        syn_retries: SYN-ACK retransmissions before a half-open connection is dropped.
        delayed_ack: longest delay of an ACK (RFC 9293 MUST-40: < 0.5 s).
        time_wait: TIME-WAIT duration (short: the link to the app is local).
        half_close_timeout: how long a half-closed connection (FIN-WAIT-2 or CLOSE-WAIT, and
            the LAST-ACK/CLOSING tails) may sit without traffic before it is reset.
        idle_timeout: an established connection with no traffic either way for this long is
            reset (``--tcp-timeout``).
        keepalive_idle: send keep-alive probes to the app after this much silence
            (None: off, the default); ``keepalive_interval`` and ``keepalive_count`` as in
            Linux.
        initial_window: initial congestion window in segments (RFC 6928 uses 10).
        max_ooo_ranges: out-of-order ranges held per connection (R4).
        challenge_ack_rate: challenge ACKs per second per connection (RFC 5961 §7).
        min_mss: floor for the peer's MSS (tinier values are clamped up).
        gso_max_size: the largest payload of one outbound packet when the device segments
            (GSO; requires checksum offload): new data goes out in packets of up to this
            many bytes, each cut by the device into MSS-sized segments. 0: off.
    """

    recv_buffer: int = 256 * 1024
    send_buffer: int = 256 * 1024
    send_buffer_max: int = 0
    window_scale: bool = True
    sack: bool = True
    timestamps: bool = True
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 60.0
    max_retries: int = 10
    syn_retries: int = 5
    delayed_ack: float = 0.04
    time_wait: float = 2.0
    half_close_timeout: float = 60.0
    idle_timeout: float = 600.0
    keepalive_idle: float | None = None
    keepalive_interval: float = 15.0
    keepalive_count: int = 4
    initial_window: int = 10
    max_ooo_ranges: int = 64
    challenge_ack_rate: int = 10
    min_mss: int = 88
    gso_max_size: int = 0

    def __post_init__(self) -> None:
        if not 1024 <= self.recv_buffer <= (65535 << 14):
            raise ConfigError("recv_buffer must be between 1 KiB and 1 GiB")
        if not 1024 <= self.send_buffer <= (1 << 30):
            raise ConfigError("send_buffer must be between 1 KiB and 1 GiB")
        if self.send_buffer_max and not self.send_buffer <= self.send_buffer_max <= (1 << 30):
            raise ConfigError("send_buffer_max must be 0 or between send_buffer and 1 GiB")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ConfigError("need 0 < min_rto <= initial_rto <= max_rto")
        if self.max_retries < 1 or self.syn_retries < 0:
            raise ConfigError("max_retries must be >= 1 and syn_retries >= 0")
        if not 0 <= self.delayed_ack < 0.5:
            raise ConfigError("delayed_ack must be in [0, 0.5) seconds (RFC 9293 MUST-40)")
        for name in ("time_wait", "half_close_timeout", "idle_timeout", "keepalive_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.keepalive_idle is not None and self.keepalive_idle <= 0:
            raise ConfigError("keepalive_idle must be positive or None")
        if self.keepalive_count < 1:
            raise ConfigError("keepalive_count must be >= 1")
        if not 1 <= self.initial_window <= 100:
            raise ConfigError("initial_window must be between 1 and 100 segments")
        if self.max_ooo_ranges < 1:
            raise ConfigError("max_ooo_ranges must be >= 1")
        if self.challenge_ack_rate < 1:
            raise ConfigError("challenge_ack_rate must be >= 1")
        if not 64 <= self.min_mss <= 1460:
            raise ConfigError("min_mss must be between 64 and 1460")

    @property
    def recv_wscale(self) -> int:
        """The window-scale shift we announce: the least that lets the buffer be advertised."""
        shift = 0
        while (self.recv_buffer >> shift) > 0xFFFF:
            shift += 1
        return shift
