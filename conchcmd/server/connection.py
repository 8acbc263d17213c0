"""ssh-connection: Conch's connection service with sshd's channel rules and input flow control."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, cast

from twisted.conch import error as conch_error
from twisted.conch.ssh import connection, transport
from twisted.conch.ssh.common import NS, getNS
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from conchcmd.commands.framework import ExitStatus
from conchcmd.core.audit import error_kind, sanitise
from conchcmd.core.flow import ChannelConnection, FlowControlledChannel
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.session.channel import SessionChannel
from conchcmd.wire.conchprivate import QuietConnection

if TYPE_CHECKING:
    from conchcmd.server.transport import ServerTransport
    from conchcmd.session.realm import CommandUser

log = Logger(namespace=LOG_NAMESPACE)

#: Channel opens with a smaller maximum packet size are refused: 0 left the output loop with
#: nothing to send (it spun forever), 1 cost ~25 µs of CPU per byte. RFC 4254 sets no floor and
#: sshd none either (serverloop.c takes the client's value; channels.c stops at a 0 length);
#: real clients offer 16 KiB (PuTTY) to 32 KiB (OpenSSH's CHAN_SES_PACKET_DEFAULT).
MIN_CHANNEL_PACKET = 1024
EXIT_STATUS = NS(b"exit-status") + b"\0"  # the request's name, want-reply false
#: How long the reply to an exec or shell request, and the command's first output, may wait for
#: the exit status, to leave with it (one write and one wake-up of the client instead of two or
#: three): a quick command's whole answer is then one flight. Nothing of the channel overtakes it.
REPLY_HOLD = 0.01
HOLD_BYTES = 32 * 1024  # output held with the reply at most; more is sent at once
MAX_WINDOW = 0xFFFFFFFF  # RFC 4254 5.2: a window may not grow past 2^32 - 1


class ConnectionService(QuietConnection):
    """ssh-connection that refuses non-session channels cleanly (Conch logs a traceback for
    each) and channels with a tiny maximum packet size, tolerates messages for unknown channels,
    holds back window adjustments for channels that hold as much input as they may (input flow
    control, see SessionChannel), and enforces sshd's channel rules Conch lacks: no answer to an
    open nobody made, no window past 2^32-1, every channel closed when the connection ends."""

    transport: ServerTransport

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.transport.start_liveness(self)

    def busy(self) -> bool:
        """True while a command runs on any channel (so the connection is not idle)."""
        return any(c.busy for c in self.flow_channels())

    def flow_channels(self) -> list[FlowControlledChannel]:
        """The open channels, as flow control sees them (the avatar opens session channels only)."""
        return [c for c in self.channels.values() if isinstance(c, SessionChannel)]

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        channel_type, rest = getNS(packet)
        sender, window, max_packet = struct.unpack(">3L", rest[:12])
        max_sessions = self.transport.factory.settings.limits.max_sessions
        if channel_type != b"session":
            self._refuse_channel(sender, channel_type, b"only session channels are allowed")
        elif max_packet < MIN_CHANNEL_PACKET:
            # Any window (a uint32) is fine: 0 is legal (opened later), and output waits for it.
            self._refuse_channel(
                sender,
                channel_type,
                b"maximum packet size %d is below %d" % (max_packet, MIN_CHANNEL_PACKET),
                kind="maximum packet size too small",
            )
        elif len(self.channels) >= max_sessions:
            self._refuse_channel(sender, channel_type, b"too many sessions (max %d)" % max_sessions)
        else:
            self._open_session(sender, window, max_packet, rest[12:])

    def _open_session(self, sender: int, window: int, max_packet: int, data: bytes) -> None:
        """Conch's ssh_CHANNEL_OPEN for a session channel, without its getChannel indirection
        and its per-channel log calls (a debug and an info line per open)."""
        try:
            avatar = cast("CommandUser", self.transport.avatar)  # the realm's, set at login
            chan = avatar.lookupChannel(b"session", window, max_packet, data)
        except Exception:
            self._internal_error(Failure(), "opening a session channel", "channel refused")
            self.transport.sendPacket(
                connection.MSG_CHANNEL_OPEN_FAILURE,
                struct.pack(">2L", sender, connection.OPEN_CONNECT_FAILED) + NS(b"unknown failure") + NS(b""),
            )
            return
        chan.conn = self
        local_id = self.localChannelID
        chan.id = local_id  # type: ignore[assignment]  # Conch's stub types it as None
        self.localChannelID += 1
        self.channels[local_id] = chan
        self.channelsToRemoteChannel[chan] = sender
        self.localToRemoteChannel[local_id] = sender
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_CONFIRMATION,
            struct.pack(">4L", sender, local_id, chan.localWindowSize, chan.localMaxPacket) + chan.specificData,
        )

    def _refuse_channel(self, sender: int, channel_type: bytes, why: bytes, kind: str | None = None) -> None:
        name = sanitise(channel_type, 64)
        # The type is the client's to choose: keyed by it, each new name would be a line (and a
        # counter) of its own.
        group = "session" if channel_type == b"session" else "non-session"
        self.transport.refusals.note(
            f"Refused {group} channel ({kind or why.decode()})",
            "Refused {kind} channel for {peer}: {why}",
            kind=name,
            why=why.decode(),
        )
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED) + NS(why) + NS(b""),
        )

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        if 90 <= messageNum <= 100 and self.transport.liveness is not None:
            self.transport.liveness.activity()
        if 93 <= messageNum <= 98 and len(packet) >= 4:
            (local_id,) = struct.unpack(">L", packet[:4])
            if local_id not in self.channels:
                self.transport.refusals.note(
                    "Messages for unknown channels",
                    "Ignoring messages for unknown channel {id} from {peer}",
                    id=local_id,
                )
                return
        super().packetReceived(messageNum, packet)

    def _awaiting_confirmation(self, packet: bytes, what: bytes) -> bool:
        """Whether the channel a client's OPEN_CONFIRMATION / OPEN_FAILURE names is one this
        server opened and the client has not answered yet; if not, the connection ends (sshd,
        channels.c: "Received open failure for non-opening channel"). Conch would re-set an open
        channel's window and packet size, or delete it without closing it (its command kept
        running after the connection ended)."""
        (local_id,) = struct.unpack(">L", packet[:4])
        chan = self.channels.get(local_id)
        if chan is not None and chan not in self.channelsToRemoteChannel:
            return True
        self.transport.sendDisconnect(
            transport.DISCONNECT_PROTOCOL_ERROR, b"Received open %s for non-opening channel %d" % (what, local_id)
        )
        return False

    def ssh_CHANNEL_OPEN_CONFIRMATION(self, packet: bytes) -> None:
        if self._awaiting_confirmation(packet, b"confirmation"):
            super().ssh_CHANNEL_OPEN_CONFIRMATION(packet)

    def ssh_CHANNEL_OPEN_FAILURE(self, packet: bytes) -> None:
        if self._awaiting_confirmation(packet, b"failure"):
            super().ssh_CHANNEL_OPEN_FAILURE(packet)

    def ssh_CHANNEL_REQUEST(self, packet: bytes) -> None:
        # Conch runs each request through maybeDeferred and two callbacks (a Deferred and its
        # chain per request) and the exec's command then waits a reactor turn; session channels
        # are answered at once and start their command right after the reply is queued.
        (local_id,) = struct.unpack(">L", packet[:4])
        chan = self.channels[local_id]  # packetReceived has dropped unknown ones
        if not isinstance(chan, SessionChannel):
            super().ssh_CHANNEL_REQUEST(packet)
            return
        request_type, rest = getNS(packet[4:])
        want_reply = [rest[:1] not in (b"", b"\0")]
        if chan.held_flight is not None:
            self.release_flight(chan)  # a reply owed to an earlier request goes first

        def reply(ok: bool, begins: bool = False) -> None:
            remote = self.localToRemoteChannel.get(local_id)
            if want_reply[0] and remote is not None:
                want_reply[0] = False  # one answer, even if starting the command then raises
                message = connection.MSG_CHANNEL_SUCCESS if ok else connection.MSG_CHANNEL_FAILURE
                if ok and begins:  # sent with what the command sends first (REPLY_HOLD)
                    chan.held_flight, chan.held_bytes = [(message, struct.pack(">L", remote))], 0
                    return
                self.transport.sendPacket(message, struct.pack(">L", remote))

        had_handler = chan.handler is not None
        try:
            chan.answer_request(request_type, rest[1:], reply)
        except Exception:
            self._request_failed(Failure(), chan, request_type, rest[1:], want_reply[0], had_handler)
            reply(False)
        flight = chan.held_flight
        if flight is not None:
            if len(flight) > 1:
                self.release_flight(chan)  # output already (a shell's prompt): it waits no longer
            elif chan.reply_timer is None:
                chan.reply_timer = chan.context.clock.callLater(REPLY_HOLD, self._flight_due, chan)

    def _internal_error(self, failure: Failure, doing: str, then: str) -> None:
        """A bug of ours that ends one request, not the connection: logged as the transport logs
        its own, the traceback once per place in the code (a logged-in user who can trigger it
        must not flood the log with a traceback a request), then one line each time."""
        t = self.transport
        t.factory.internal_errors.report(log, failure, doing, f"{t.shown_user}@{t.peer}", then)

    def _request_failed(
        self, failure: Failure, chan: SessionChannel, kind: bytes, data: bytes, unanswered: bool, had_handler: bool
    ) -> None:
        """A channel request that hit a bug: refused (CHANNEL_FAILURE) if not answered yet, as
        sshd refuses a request it cannot serve; an exec or shell it had begun (its success sent)
        ends like a command that crashed (stderr "conchcmd: internal error", exit status 1), not
        left waiting for an exit status that never comes; an exec refused is audited as the
        server's failure (a `command` record is what an exec leaves)."""
        began = not had_handler and chan.handler is not None and not unanswered
        then = "command ended, exit status 1" if began else "request refused"
        self._internal_error(failure, f"answering request {sanitise(kind, 64)} on channel {chan.id}", then)
        if began:
            chan.send(b"conchcmd: internal error\n", stderr=True)
            chan.finish(ExitStatus.FAILED)
        elif kind == b"exec" and not had_handler:
            identity = chan.context.identity
            chan.context.channel_audit(chan.id, "exec").record(
                "command",
                user=sanitise(identity.user),
                peer=chan.context.peer,
                fingerprint=identity.fingerprint,
                line=sanitise(data[4 : 4 + int.from_bytes(data[:4], "big")]),
                server_side=True,
                reason=sanitise(f"internal error: {error_kind(failure.value)}: {failure.getErrorMessage()}", 200),
            )

    def _flight_due(self, chan: SessionChannel) -> None:
        chan.reply_timer = None
        self.release_flight(chan)

    def _take_flight(self, chan: SessionChannel) -> list[tuple[int, bytes]] | None:
        """The packets held for the channel (its reply first), no longer held; None if there are
        none, or if the channel is gone (nothing more is sent for it)."""
        flight, chan.held_flight = chan.held_flight, None
        timer, chan.reply_timer = chan.reply_timer, None
        if timer is not None:
            timer.cancel()
        return flight if flight is not None and chan in self.channelsToRemoteChannel else None

    def release_flight(self, chan: SessionChannel) -> None:
        """Send what is held for the channel (see REPLY_HOLD) now, in one write: before any other
        packet of the channel, once output passes HOLD_BYTES, or once REPLY_HOLD has passed."""
        flight = self._take_flight(chan)
        if flight is not None:
            self.transport.send_packets(flight)

    # While a flight is held, the channel's output joins it, and any other packet of the channel
    # sends it first: the order on the wire is the order the packets were made in.

    def sendData(self, channel: Any, data: bytes) -> None:
        flight = channel.held_flight
        if flight is None or channel.localClosed:
            super().sendData(channel, data)
            return
        remote = self.channelsToRemoteChannel[channel]
        flight.append((connection.MSG_CHANNEL_DATA, struct.pack(">L", remote) + NS(data)))
        channel.held_bytes += len(data)
        if channel.held_bytes >= HOLD_BYTES:
            self.release_flight(channel)

    def sendExtendedData(self, channel: Any, dataType: int, data: bytes) -> None:
        flight = channel.held_flight
        if flight is None or channel.localClosed:
            super().sendExtendedData(channel, dataType, data)
            return
        remote = self.channelsToRemoteChannel[channel]
        flight.append((connection.MSG_CHANNEL_EXTENDED_DATA, struct.pack(">2L", remote, dataType) + NS(data)))
        channel.held_bytes += len(data)
        if channel.held_bytes >= HOLD_BYTES:
            self.release_flight(channel)

    def sendEOF(self, channel: Any) -> None:
        if channel.held_flight is not None:
            self.release_flight(channel)
        super().sendEOF(channel)

    def sendClose(self, channel: Any) -> None:
        if channel.held_flight is not None:
            self.release_flight(channel)
        super().sendClose(channel)

    def sendRequest(self, channel: Any, requestType: bytes, data: bytes, wantReply: int = 0) -> Any:
        if channel.held_flight is not None:
            self.release_flight(channel)
        return super().sendRequest(channel, requestType, data, wantReply)

    def send_exit(self, channel: SessionChannel, status: int) -> None:
        """EOF, exit-status and CLOSE for a channel, in one write with what is held for it (Conch's
        sendEOF, sendRequest and sendClose: three writes and three log calls), then the channel
        counts as closed here."""
        if channel.localClosed:
            return
        remote = struct.pack(">L", self.channelsToRemoteChannel[channel])
        flight = self._take_flight(channel) if channel.held_flight is not None else None
        end = [
            (connection.MSG_CHANNEL_EOF, remote),
            (connection.MSG_CHANNEL_REQUEST, remote + EXIT_STATUS + struct.pack(">L", status & 0xFFFFFFFF)),
            (connection.MSG_CHANNEL_CLOSE, remote),
        ]
        self.transport.send_packets(end if flight is None else flight + end)
        channel.closing = channel.localClosed = True
        if channel.remoteClosed:
            self.channelClosed(channel)

    def ssh_REQUEST_SUCCESS(self, packet: bytes) -> None:
        # An answer to no global request of ours is ignored, as sshd does (serverloop.c
        # server_input_keep_alive); Conch raised IndexError (a "protocol error").
        if self.deferreds["global"]:
            super().ssh_REQUEST_SUCCESS(packet)

    def ssh_REQUEST_FAILURE(self, packet: bytes) -> None:
        if self.deferreds["global"]:
            super().ssh_REQUEST_FAILURE(packet)

    def ssh_CHANNEL_WINDOW_ADJUST(self, packet: bytes) -> None:
        local_id, add = struct.unpack(">2L", packet[:8])
        chan = self.channels[local_id]  # packetReceived has dropped unknown ones
        if chan.remoteWindowLeft + add > MAX_WINDOW:
            # RFC 4254 5.2; sshd: fatal "adjust %u overflows remote window %u" (channels.c)
            self.transport.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR,
                b"window adjust %d overflows the window of channel %d (%d)" % (add, local_id, chan.remoteWindowLeft),
            )
            return
        super().ssh_CHANNEL_WINDOW_ADJUST(packet)

    def serviceStopped(self) -> None:
        """Every channel is closed (its command interrupted), even if closing another raised:
        Conch's loop stopped at the first exception and left the others running."""
        self._stopping = True  # closing channels free budget; grant_window then opens no window
        confirmed = list(self.channelsToRemoteChannel)
        pending = [c for c in self.channels.values() if c not in self.channelsToRemoteChannel]
        self.channels.clear()
        self.channelsToRemoteChannel.clear()
        self.localToRemoteChannel.clear()
        for chan in confirmed + pending:
            chan.localClosed = chan.remoteClosed = True
            for d in self.deferreds.pop(chan.id, []):
                d.addErrback(lambda _: None)
                d.errback(conch_error.ConchError("Channel closed."))
            try:
                if chan in confirmed:
                    chan.closed()
                else:
                    chan.openFailed(ConnectionLost())
            except Exception:
                log.failure("Closing channel {id} of {peer} failed", id=chan.id, peer=self.transport.peer)
        self.fail_global_requests()

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        # Conch re-opens a channel's window whenever half of it is used, however much input the
        # channel still holds; session channels grant window from their byte account instead.
        if isinstance(channel, SessionChannel):
            return
        super().adjustWindow(channel, bytesToAdd)

    def grant_window(self, channel: SessionChannel, bytes_to_add: int) -> None:
        """Open a session channel's window by what its account can take (see update_window)."""
        if not self._stopping:  # closing channels free budget; the others need no window now
            if channel.held_flight is not None:
                self.release_flight(channel)
            super().adjustWindow(channel, bytes_to_add)

    _stopping = False


if TYPE_CHECKING:  # mypy holds the connection to the contract the session channels rely on
    _connection_contract: type[ChannelConnection] = ConnectionService
