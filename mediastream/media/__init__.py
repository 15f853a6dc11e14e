"""Media: recording, playback, resampling and capture; above sessions, below the runtime."""
