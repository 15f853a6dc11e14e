"""A voice bot: greets, listens, answers each utterance, and takes a PIN by DTMF.

    python examples/voice_bot.py --make-caller caller.wav   # espeak-ng: silence, a sentence
    python examples/voice_bot.py [--port 8765] [--record-dir recordings]
    mediastream simulate ws://127.0.0.1:8765/ --realtime --audio caller.wav \\
        --dtmf 8:1 --dtmf 8.3:2 --dtmf 8.6:3 --dtmf 8.9:4 --dtmf 9.2:# --linger 4

What it shows, each piece a few lines:

- speech detection on the caller's track (``speech = SpeechOptions()``: webrtcvad, the
  ``[vad]`` extra), so ``on_speech_end`` gets each utterance with its audio;
- a greeting that the caller cannot interrupt (``interruptible=False``), and replies that they
  can: speaking over one for ``barge_in_ms`` clears it and ``on_interrupted`` says how much
  was heard;
- a pluggable ``respond(utterance) -> Reply``: the stand-in here speaks a fixed sentence
  with espeak-ng (offline); a real bot overrides it with speech-to-text, a language model
  and text-to-speech (the README names some);
- a PIN collected with a terminator and timeouts (``collect_digits``), in a task, while the
  audio keeps flowing;
- a recording that holds both voices (``record_playback``): the caller, then what the bot
  played, where it played.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import shutil
from dataclasses import dataclass

import numpy as np
import soundfile

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.config import PlaybackConfig, SpeechOptions
from mediastream.media.playback import Playback
from mediastream.voice.segment import Utterance

logger = logging.getLogger("voice_bot")


@dataclass(frozen=True)
class Reply:
    """Audio to play back: int16 mono PCM at ``sample_rate``."""

    pcm: np.ndarray
    sample_rate: int


async def speak(text: str) -> Reply:
    """Text to speech with espeak-ng (Debian's ``espeak-ng``), offline: a WAV on stdout."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    process = await asyncio.create_subprocess_exec(
        "espeak-ng", "--stdout", "-s", "160", text,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    wav, _ = await process.communicate()
    pcm, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    return Reply(pcm, rate)


async def fixed_reply(utterance: Utterance) -> Reply | None:
    """The stand-in for STT, a model and TTS: the same sentence for every utterance."""
    seconds = utterance.duration_ms / 1000
    return await speak(f"I heard you speak for {seconds:.1f} seconds.")


class VoiceBot(StreamHandler):
    """One call: greet, then answer every utterance; meanwhile collect a 4-digit PIN."""

    speech = SpeechOptions()  # webrtc on the caller's track; barge-in after 300 ms of speech
    greeting_text = "Hello. Say something, or enter your PIN."

    async def respond(self, utterance: Utterance) -> Reply | None:
        """What to say back to ``utterance`` (None: nothing). Override this to plug in
        speech-to-text, a language model and text-to-speech."""
        return await fixed_reply(utterance)

    async def on_start(self) -> None:
        self.utterances: list[Utterance] = []
        self.interrupted: list[float] = []  # ms heard of each reply the caller cut off
        self.pin: str | None = None
        greeting = await speak(self.greeting_text)
        self.greeting = await self.call.play(
            greeting.pcm, greeting.sample_rate, interruptible=False
        )
        # in a task: awaiting it here would hold up this stream's frames (and its digits)
        self.pin_task = asyncio.create_task(self.collect_pin())

    async def collect_pin(self) -> None:
        result = await self.call.collect_digits(
            max_digits=4, terminator="#", first_digit_timeout=30.0,
            inter_digit_timeout=5.0, total_timeout=60.0,
        )  # fmt: skip
        logger.info("%s: PIN %r (%s)", self.call.stream_id, result.digits, result.reason)
        self.pin = result.digits
        if result.digits:
            answer = await speak(f"Thank you. Your PIN has {len(result.digits)} digits.")
            await self.call.play(answer.pcm, answer.sample_rate)

    async def on_speech_end(self, utterance: Utterance) -> None:
        self.utterances.append(utterance)
        logger.info(
            "%s: utterance %.0f-%.0f ms", self.call.stream_id, utterance.start_ms, utterance.end_ms
        )
        reply = await self.respond(utterance)
        if reply is not None:
            await self.call.play(reply.pcm, reply.sample_rate)  # interruptible

    async def on_interrupted(self, playback: Playback) -> None:
        self.interrupted.append(playback.heard_ms)
        logger.info("%s: cut off after %.0f ms", self.call.stream_id, playback.heard_ms)

    async def on_stop(self) -> None:
        self.pin_task.cancel()


async def make_caller(path: str) -> None:
    """A caller to try the bot with: 3 s of silence (the greeting), one sentence, then 8 s of
    silence while the bot answers and the keys are pressed."""
    said = await speak("I would like to check my account balance please.")
    silence = np.zeros(said.sample_rate, np.int16)
    pcm = np.concatenate([silence] * 3 + [said.pcm] + [silence] * 8)
    soundfile.write(path, pcm, said.sample_rate, subtype="PCM_16")
    print(f"wrote {path}")


def ready(server: MediaServer) -> None:
    print(f"mediastream: listening on ws://{server.host}:{server.port}/", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--record-dir", help="record both voices to DIR/<stream_id>.wav")
    parser.add_argument("--make-caller", metavar="WAV", help="write a caller to try it, and exit")
    args = parser.parse_args()
    if args.make_caller:
        asyncio.run(make_caller(args.make_caller))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    options = StreamOptions(
        record_dir=args.record_dir,
        record_playback=True,  # the bot's voice as the recording's last channel
        playback=PlaybackConfig(mode="rtp"),  # bidirectionalMode="rtp" in the TeXML
    )
    server = MediaServer(VoiceBot, host=args.host, port=args.port, options=options)
    asyncio.run(server.serve_forever(on_ready=ready))


if __name__ == "__main__":
    main()
