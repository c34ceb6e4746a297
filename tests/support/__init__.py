"""What tests share that is not a fixture: the loopback SSH device (sshd.py) and HTTP stand-ins (http.py)."""
