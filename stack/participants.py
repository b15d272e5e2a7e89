"""Participants the tests and the demo put in rooms besides the SIP side."""

from __future__ import annotations

import asyncio
import contextlib
import time

from livekit import api, rtc

from stack._stack import Stack

__all__ = ["Answerer"]


class Answerer:
    """A standard participant that publishes an audio track of silence.

    Real livekit-sip answers an inbound call only once its participant can subscribe
    to audio someone publishes in the room; this stands in for the agent that speaks.
    """

    SAMPLE_RATE = 48000
    FRAME_MS = 20

    def __init__(self, room_name: str, identity: str = "answerer") -> None:
        self.room_name = room_name
        self.identity = identity
        self.room = rtc.Room()
        self.source = rtc.AudioSource(self.SAMPLE_RATE, 1)
        self._pump: asyncio.Task[None] | None = None
        self.published_at: float | None = None

    async def connect(self, stack: Stack) -> None:
        """Join the room and publish the microphone track, then keep feeding it silence."""
        token = (
            api.AccessToken(stack.api_key, stack.api_secret)
            .with_identity(self.identity)
            .with_grants(api.VideoGrants(room_join=True, room=self.room_name))
            .to_jwt()
        )
        await self.room.connect(stack.ws_url, token)
        track = rtc.LocalAudioTrack.create_audio_track(f"{self.identity}-mic", self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self.published_at = time.monotonic()
        self._pump = asyncio.create_task(self._silence(), name=f"answerer-{self.room_name}")

    async def _silence(self) -> None:
        samples = self.SAMPLE_RATE * self.FRAME_MS // 1000
        frame = rtc.AudioFrame.create(self.SAMPLE_RATE, 1, samples)
        while True:
            await self.source.capture_frame(frame)

    async def close(self) -> None:
        """Stop the audio and leave the room."""
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self.room.isconnected():
            await self.room.disconnect()
        await self.source.aclose()
