"""Voice-bot building blocks on a track's decoded audio: speech detectors (``detect``).

Media level: numpy, ``mediastream.config`` and ``mediastream.media`` only, never the runtime or
a server. The Silero model ships in ``data/`` (MIT, see ``data/LICENSE-silero-vad``): nothing is
downloaded at run time.
"""
