"""The hostile-input suite: what an attacker who can send packets into the TUN may try."""
