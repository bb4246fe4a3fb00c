"""Privacy rules applied before anything is stored or logged: IP policy, cookie policy."""
