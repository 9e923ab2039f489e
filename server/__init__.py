"""The TADBot server: hears a turn, reads the face, decides a calm reply, and keeps the therapist's record."""
