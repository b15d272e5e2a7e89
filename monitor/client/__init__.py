"""The dial-side hook: what a dialer runs next to CreateSIPParticipant to report a
failed dial's SIP code, and the credential it sends."""
