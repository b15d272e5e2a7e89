"""Where events come from: webhooks, the room observer (the signal channel, or the rtc
fallback in processes of its own), and RoomService listings."""
