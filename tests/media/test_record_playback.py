"""The recording's playback channel: what our players sent, where the far end played it.

Unit tests drive ``WavRecorder(playback=True)`` and ``PlayoutTap`` with made-up times; the
end-to-end tests run a real server on 127.0.0.1 (``record_playback`` on) and the simulator's
far end in real time, and compare the recording with what the far end heard on the call's
clock (``FarEnd.heard_on_call_clock``), sample by sample and by where the audio begins.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile

from mediastream import MediaServer, StreamHandler, StreamOptions, codecs
from mediastream.errors import RecordingError
from mediastream.media.playback import PlaybackConfig
from mediastream.media.played import PROBES, PlayoutTap
from mediastream.media.recording import WavFile, WavRecorder
from mediastream.media.resample import StreamResampler
from mediastream.runtime.played import StreamClock
from mediastream.simulate import FarEnd, FarEndConfig, plan_call, send_call, synthesize_speechlike
from tests.conftest import ws_url
from tests.media.test_recording import Frame
from tests.media.test_recording import tone as noise  # random samples, as the name says

pytestmark = pytest.mark.both_transports

# the acceptance bound for a voice bot's recording (the measured errors are far less)
ALIGNMENT_BOUND_S = 0.020


def chirp(seconds: float, rate: int, f0: float = 300.0, f1: float = 3000.0) -> np.ndarray:
    """A rising sweep whose first sample is loud: where it begins is its first non-zero
    sample, and its autocorrelation has one sharp peak."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return (8000 * np.cos(phase)).astype(np.int16)


def lag_of(reference: np.ndarray, test: np.ndarray) -> int:
    """The shift (samples) that best lines ``test`` up with ``reference``: ``test[i + lag]``
    matches ``reference[i]`` (cross-correlation peak, by FFT)."""
    n = len(reference) + len(test)
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(test.astype(float), size) * np.conj(
        np.fft.rfft(reference.astype(float), size)
    )
    corr = np.fft.irfft(spectrum, size)
    lag = int(np.argmax(corr))
    return lag if lag < size // 2 else lag - size


def onset(pcm: np.ndarray) -> int:
    return int(np.flatnonzero(pcm)[0])


# ------------------------------------------------------------------ the layout


def test_inbound_only_is_two_channels_from_the_first_block(tmp_path: Path):
    rec = WavRecorder(tmp_path / "a.wav", 8000, playback=True)
    inbound = noise(8000, 1)
    for i in range(0, 8000, 160):
        rec.append(Frame("inbound", inbound[i : i + 160], 8000, i))
    rec.flush()
    assert rec.channels == 2  # before anything was played
    played = noise(1600, 2)
    rec.append(Frame("playback", played, 8000, 4000))
    rec.close()
    data, _ = soundfile.read(tmp_path / "a.wav", dtype="int16")
    assert data.shape == (8000, 2)
    np.testing.assert_array_equal(data[:, 0], inbound)
    np.testing.assert_array_equal(data[4000:5600, 1], played)
    assert not data[:4000, 1].any() and not data[5600:, 1].any()


def test_both_tracks_then_playback_is_three_channels(tmp_path: Path):
    rec = WavRecorder(tmp_path / "b.wav", 8000, playback=True)
    inbound, outbound, played = noise(4000, 1), noise(4000, 2), noise(800, 3)
    for i in range(0, 4000, 160):
        rec.append(Frame("inbound", inbound[i : i + 160], 8000, i))
        rec.append(Frame("outbound", outbound[i : i + 160], 8000, i))
    rec.append(Frame("playback", played, 8000, 1000))
    rec.close()
    data, _ = soundfile.read(tmp_path / "b.wav", dtype="int16")
    assert data.shape == (4000, 3)
    np.testing.assert_array_equal(data[:, 0], inbound)
    np.testing.assert_array_equal(data[:, 1], outbound)
    np.testing.assert_array_equal(data[1000:1800, 2], played)


def test_a_late_outbound_track_widens_the_file_and_keeps_every_channel(tmp_path: Path):
    """Written as (inbound, playback); outbound shows up later: (inbound, outbound, playback)."""
    rec = WavRecorder(tmp_path / "c.wav", 8000, flush_seconds=0.1, playback=True)
    inbound, played = noise(8000, 1), noise(2000, 2)
    for i in range(0, 4000, 160):
        rec.append(Frame("inbound", inbound[i : i + 160], 8000, i))
    rec.append(Frame("playback", played, 8000, 500))
    rec.flush()
    assert rec.frames_on_disk > 0 and rec.channels == 2
    outbound = noise(4000, 3)
    for i in range(4000, 8000, 160):
        rec.append(Frame("inbound", inbound[i : i + 160], 8000, i))
        rec.append(Frame("outbound", outbound[i - 4000 : i - 3840], 8000, i))
    rec.close()
    data, _ = soundfile.read(tmp_path / "c.wav", dtype="int16")
    assert data.shape == (8000, 3)
    np.testing.assert_array_equal(data[:, 0], inbound)
    np.testing.assert_array_equal(data[4000:, 1], outbound)
    assert not data[:4000, 1].any()
    np.testing.assert_array_equal(data[500:2500, 2], played)


def test_playback_off_keeps_todays_layout_and_refuses_playback_audio(tmp_path: Path):
    rec = WavRecorder(tmp_path / "d.wav", 8000)
    rec.append(Frame("inbound", noise(160, 1), 8000, 0))
    with pytest.raises(RecordingError, match="no playback channel"):
        rec.append(Frame("playback", noise(160, 2), 8000, 0))
    rec.close()
    assert soundfile.info(str(tmp_path / "d.wav")).channels == 1


def test_a_continued_three_channel_file_keeps_its_layout(tmp_path: Path):
    path = tmp_path / "e.wav"
    first = WavRecorder(path, 8000, playback=True)
    first.append(Frame("inbound", noise(800, 1), 8000, 0))
    first.append(Frame("outbound", noise(800, 2), 8000, 0))
    first.close()
    again = WavRecorder(path, 8000)  # playback off, but the file has the channel
    played = noise(400, 3)
    again.append(Frame("inbound", noise(800, 4), 8000, 0))
    again.append(Frame("playback", played, 8000, 100))
    again.close()
    data, _ = soundfile.read(path, dtype="int16")
    assert data.shape == (1600, 3)
    np.testing.assert_array_equal(data[900:1300, 2], played)


def test_widening_two_channels_to_three_moves_the_data(tmp_path: Path):
    wav = WavFile(tmp_path / "f.wav", 8000, 2)
    block = noise(200, 1).reshape(100, 2)
    wav.write(0, block)
    wav.widen(3, (0, 2))
    got = wav.read(0, 100)
    wav.close()
    np.testing.assert_array_equal(got[:, 0], block[:, 0])
    np.testing.assert_array_equal(got[:, 2], block[:, 1])
    assert not got[:, 1].any()


# ------------------------------------------------------------------ the tap, on a made-up clock


class Collected:
    def __init__(self) -> None:
        self.pieces: list[tuple[np.ndarray, int, float]] = []

    def __call__(self, pcm: np.ndarray, rate: int, start: float) -> None:
        self.pieces.append((pcm.copy(), rate, start))

    def audio(self) -> np.ndarray:
        return np.concatenate([p for p, _, _ in self.pieces])


def pcmu_chunks(pcm: np.ndarray) -> list[bytes]:
    encoder = codecs.encoder("PCMU")
    return [encoder.encode(pcm[i : i + 160]) for i in range(0, len(pcm), 160)]


def test_the_tap_waits_for_the_echo_and_places_the_segment_by_it():
    got = Collected()
    tap = PlayoutTap(got, 8000, 8000, decoder=codecs.decoder("PCMU"))
    chunks = pcmu_chunks(chirp(0.1, 8000))
    for n, chunk in enumerate(chunks):  # a probe after each of the first three
        assert tap.sent(chunk, 10.0 + 0.02 * n, 10.0 + 0.02 * max(0, n - 2)) is (n < PROBES)
        if n < PROBES:
            tap.marked(f"probe-{n}", 10.0 + 0.02 * (n + 1))
    assert got.pieces == []  # played in the model, but not placed before its echo
    tap.echoed("probe-0", 10.029)  # 9 ms after the model
    tap.echoed("probe-1", 10.047)  # 7 ms: the way there and back, the least noise
    tap.release(10.06)
    assert got.pieces == []  # one more echo to come
    tap.echoed("probe-2", 10.072)
    tap.release(10.2)
    decoder = codecs.decoder("PCMU")
    expected = np.concatenate([decoder.decode(c) for c in chunks])
    np.testing.assert_array_equal(got.audio(), expected)
    assert got.pieces[0][2] == pytest.approx(10.007)
    assert tap.correction == pytest.approx(0.012)  # the latest, for when no echo is recent
    # the pieces continue each other exactly
    for (a, rate, start), (_, _, next_start) in zip(got.pieces, got.pieces[1:], strict=False):
        assert next_start == pytest.approx(start + len(a) / rate)


def test_a_clear_keeps_what_played_before_it_and_nothing_after():
    got = Collected()
    tap = PlayoutTap(got, 8000, 8000, decoder=codecs.decoder("PCMU"))
    for n, chunk in enumerate(pcmu_chunks(chirp(0.1, 8000))):
        tap.sent(chunk, 10.0 + 0.02 * n, 10.0)  # all five sent at once (a long lead)
    tap.marked("probe", 10.02)
    tap.echoed("probe", 10.021)
    tap.cleared(10.0305)  # 244 samples had played
    tap.release(11.0)
    assert len(got.audio()) == 244
    assert got.pieces[0][2] == pytest.approx(10.001)


def test_no_echo_at_all_places_by_the_model_after_the_hold():
    got = Collected()
    tap = PlayoutTap(got, 8000, 8000, decoder=codecs.decoder("PCMU"))
    tap.sent(pcmu_chunks(chirp(0.02, 8000))[0], 5.0, 5.0)
    tap.marked("probe", 5.02)
    tap.release(5.5)
    assert got.pieces == []  # a probe's echo is still expected
    tap.release(16.0)  # MAX_HOLD_SECONDS later: the far end does not echo
    assert len(got.audio()) == 160 and got.pieces[0][2] == 5.0
    tap.sent(pcmu_chunks(chirp(0.02, 8000))[0], 20.0, 20.0)
    tap.release(20.03)  # no more waiting
    assert len(got.pieces) == 2 and got.pieces[1][2] == 20.0


def test_the_tap_resamples_to_the_recordings_rate_in_one_stream():
    got = Collected()
    wide = chirp(0.2, 16000)
    tap = PlayoutTap(got, 16000, 8000, decoder=codecs.decoder("L16", 16000))
    encoder = codecs.encoder("L16", 16000)
    for n in range(10):
        tap.sent(encoder.encode(wide[n * 320 : (n + 1) * 320]), 1.0 + 0.02 * n, 1.0)
    tap.marked("probe", 1.02)
    tap.echoed("probe", 1.02)
    tap.release(1.5)
    whole = StreamResampler(16000, 8000)
    expected = np.concatenate([whole.process(wide), whole.flush()])
    np.testing.assert_array_equal(got.audio(), expected)
    assert all(rate == 8000 for _, rate, _ in got.pieces)


def test_mp3_mode_taps_the_pcm_and_places_it_by_the_files_echo():
    got = Collected()
    tap = PlayoutTap(got, 8000, 8000)  # no decoder: the player gives the PCM
    pcm = chirp(0.5, 8000)
    assert tap.sent(pcm, 3.0, 3.0) is False  # no probe: the file's own mark says it
    tap.marked("ms-play-1", 3.5)
    tap.release(3.6)
    assert got.pieces == []
    tap.echoed("ms-play-1", 3.52)
    np.testing.assert_array_equal(got.audio(), pcm)
    assert got.pieces[0][2] == pytest.approx(3.02)


def test_the_stream_clock_takes_the_least_delayed_frame_and_restarts_per_socket():
    clock, first, second = StreamClock(), object(), object()
    clock.frame(first, 100.030, 0, 8000)  # the first frame was held up 30 ms
    clock.frame(first, 100.021, 160, 8000)  # this one 1 ms only
    clock.frame(first, 100.060, 320, 8000)
    assert clock.origin == pytest.approx(100.001)
    assert clock.position(100.501, 8000) == pytest.approx(4000)
    clock.frame(second, 200.0, 8000, 8000)  # a reconnect: its audio may follow a pause
    assert clock.origin == pytest.approx(199.0)


# ------------------------------------------------------------------ end to end, a real server


class PlaysAt(StreamHandler):
    """Plays ``AUDIO`` (at ``RATE``) ``DELAY`` s after the stream starts; a DTMF clears."""

    AUDIO: ClassVar[np.ndarray] = np.zeros(0, np.int16)
    RATE: ClassVar[int] = 8000
    DELAY: ClassVar[float] = 0.5

    async def on_start(self) -> None:
        self.task = asyncio.create_task(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(self.DELAY)
        await self.call.play(self.AUDIO, self.RATE)

    async def on_dtmf(self, digit: str) -> None:
        await self.call.clear()


def options(record_dir: Path, playback: PlaybackConfig, *, record: bool = True) -> StreamOptions:
    return StreamOptions(record_dir=record_dir, playback=playback, record_playback=record)


async def run_call(
    record_dir: Path,
    playback: PlaybackConfig,
    far: FarEndConfig,
    *,
    seconds: float = 2.5,
    rate: int = 8000,
    codec: str = "PCMU",
    tracks: tuple[str, ...] = ("inbound",),
    audio: dict[str, np.ndarray] | None = None,
    dtmf: list[tuple[float, str]] | None = None,
    record: bool = True,
) -> tuple[np.ndarray, FarEnd]:
    """One real-time call through a real server; (the recording, the far end)."""
    async with MediaServer(
        PlaysAt, port=0, options=options(record_dir, playback, record=record)
    ) as srv:
        source = audio or {t: synthesize_speechlike(seconds, rate, seed=5) for t in tracks}
        plan = plan_call(source, codec=codec, sample_rate=rate, tracks=tracks, stream_id="pb")
        result = await send_call(
            ws_url(srv), plan, realtime=True, linger=0.3, far_end=far, dtmf=dtmf or ()
        )
    assert result.far_end is not None
    data, file_rate = soundfile.read(record_dir / "pb.wav", dtype="int16", always_2d=True)
    assert file_rate == rate
    return data, result.far_end


def report(name: str, samples: float, rate: int) -> None:
    print(f"{name}: playback channel vs far end: {samples:+.1f} samples = "
          f"{samples / rate * 1000:+.2f} ms")  # fmt: skip


@pytest.mark.slow
async def test_rtp_pcmu_playback_is_on_record_where_the_caller_heard_it(record_dir: Path):
    PlaysAt.AUDIO, PlaysAt.RATE, PlaysAt.DELAY = chirp(1.0, 8000), 8000, 0.5
    data, far = await run_call(record_dir, PlaybackConfig(mode="rtp"), FarEndConfig())
    assert data.shape[1] == 2  # inbound, playback
    heard, played = far.heard_on_call_clock(), data[:, 1]
    # the very samples the caller heard (PCMU decoded as the far end decodes it) ...
    np.testing.assert_array_equal(played[played != 0], heard[heard != 0])
    # ... where the caller heard them
    error = onset(played) - onset(heard)
    report("PCMU onset", error, 8000)
    assert abs(lag_of(heard, played) - error) <= 1
    assert abs(error) <= ALIGNMENT_BOUND_S * 8000


@pytest.mark.slow
async def test_rtp_l16_playback_at_the_calls_rate_is_bit_exact(record_dir: Path):
    PlaysAt.AUDIO, PlaysAt.RATE, PlaysAt.DELAY = chirp(0.8, 16000), 16000, 0.4
    playback = PlaybackConfig(mode="rtp", codec="L16", sample_rate=16000)
    data, far = await run_call(
        record_dir, playback, FarEndConfig("rtp", "L16", 16000), rate=16000, codec="L16"
    )
    heard, played = far.heard_on_call_clock(), data[:, 1]
    np.testing.assert_array_equal(played[played != 0], heard[heard != 0])
    np.testing.assert_array_equal(played[played != 0], PlaysAt.AUDIO[PlaysAt.AUDIO != 0])
    error = onset(played) - onset(heard)
    report("L16 16 kHz onset", error, 16000)
    assert abs(error) <= ALIGNMENT_BOUND_S * 16000


@pytest.mark.slow
async def test_wideband_playback_on_a_narrowband_call_is_resampled_in_place(record_dir: Path):
    """The bot plays L16 16 kHz into a PCMU call: the 8 kHz recording holds it resampled."""
    PlaysAt.AUDIO, PlaysAt.RATE, PlaysAt.DELAY = chirp(0.8, 16000, f1=3500.0), 16000, 0.4
    playback = PlaybackConfig(mode="rtp", codec="L16", sample_rate=16000)
    data, far = await run_call(record_dir, playback, FarEndConfig("rtp", "L16", 16000))
    resampler = StreamResampler(16000, 8000)  # one stream, as the tap resamples
    expected = np.concatenate([resampler.process(PlaysAt.AUDIO), resampler.flush()])
    played = data[:, 1]
    at = lag_of(expected, played)  # where the resampled playback starts in the recording
    np.testing.assert_array_equal(played[at : at + len(expected)], expected)
    assert np.count_nonzero(played) == np.count_nonzero(expected)
    error = at - onset(far.heard_on_call_clock()) / 2  # the far end heard it at 16 kHz
    report("L16 16k on an 8k call, start", error, 8000)
    assert abs(error) <= ALIGNMENT_BOUND_S * 8000


@pytest.mark.slow
async def test_a_clear_mid_playback_keeps_only_what_was_heard(record_dir: Path):
    PlaysAt.AUDIO, PlaysAt.RATE, PlaysAt.DELAY = chirp(3.0, 8000), 8000, 0.3
    data, far = await run_call(
        record_dir, PlaybackConfig(mode="rtp"), FarEndConfig(), dtmf=[(1.3, "1")]
    )
    heard, played = far.heard_on_call_clock(), data[:, 1]
    cut = far.heard_at_clear[0]
    assert 0.7 * 8000 <= cut <= 1.3 * 8000
    kept = np.count_nonzero(played)
    report("clear: samples kept vs heard", kept - np.count_nonzero(heard), 8000)
    assert abs(kept - np.count_nonzero(heard)) <= 160 + 480  # one chunk + the lead
    np.testing.assert_array_equal(played[played != 0][: min(kept, cut) - 160],
                                  heard[heard != 0][: min(kept, cut) - 160])  # fmt: skip
    assert abs(onset(played) - onset(heard)) <= ALIGNMENT_BOUND_S * 8000


@pytest.mark.slow
async def test_mp3_playback_is_placed_at_the_far_ends_play_start(record_dir: Path):
    PlaysAt.AUDIO, PlaysAt.RATE, PlaysAt.DELAY = chirp(1.0, 8000), 8000, 0.5
    data, far = await run_call(
        record_dir, PlaybackConfig(mode="mp3"), FarEndConfig("mp3"), seconds=3.0
    )
    heard, played = far.heard_on_call_clock(), data[:, 1]
    np.testing.assert_array_equal(played[played != 0], PlaysAt.AUDIO[PlaysAt.AUDIO != 0])
    lag = lag_of(heard, played)
    report("MP3 correlation", lag, 8000)
    assert abs(lag) <= ALIGNMENT_BOUND_S * 8000


@pytest.mark.slow
async def test_both_tracks_the_far_end_sends_what_it_played_as_outbound(record_dir: Path):
    """Telnyx's outbound track is what the caller hears; the simulator's now too: the
    recording's outbound channel is the far end's heard audio, and the playback channel
    lines up with it."""
    PlaysAt.AUDIO, PlaysAt.RATE, PlaysAt.DELAY = chirp(1.0, 8000), 8000, 0.5
    silence = np.zeros(8000 * 5 // 2, np.int16)  # the other party says nothing
    source = {"inbound": synthesize_speechlike(2.5, 8000), "outbound": silence}
    data, far = await run_call(
        record_dir, PlaybackConfig(mode="rtp"), FarEndConfig(),
        tracks=("inbound", "outbound"), audio=source,
    )  # fmt: skip
    assert data.shape[1] == 3  # inbound, outbound, playback
    heard = far.heard_on_call_clock()
    outbound, played = data[:, 1], data[:, 2]
    n = min(len(heard), len(outbound))
    np.testing.assert_array_equal(outbound[:n], heard[:n])
    error = onset(played) - onset(outbound)
    report("both tracks: playback vs outbound track onset", error, 8000)
    assert abs(error) <= ALIGNMENT_BOUND_S * 8000
    np.testing.assert_array_equal(played[played != 0], outbound[outbound != 0])


@pytest.mark.slow
async def test_record_playback_off_leaves_the_layout_as_it_was(record_dir: Path):
    PlaysAt.AUDIO, PlaysAt.RATE, PlaysAt.DELAY = chirp(0.5, 8000), 8000, 0.3
    data, far = await run_call(
        record_dir, PlaybackConfig(mode="rtp"), FarEndConfig(), seconds=1.5, record=False
    )
    assert data.shape[1] == 1  # the caller only, as before
    assert len(far.heard_audio()) == 4000  # and the bot was heard
