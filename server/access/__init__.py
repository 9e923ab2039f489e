"""Who may do what: device and therapist credentials, the clients each may reach, dashboard logins.

May import: `records`, `config`, `errors`.
"""
