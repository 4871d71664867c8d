"""Project-wide write operations used when the local stack starts."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model, password_validation

DEFAULT_ADMIN_USERNAME = "admin"


@dataclass(frozen=True)
class AdminLogin:
    username: str
    password: str | None  # None when the account existed already and its password came from elsewhere
    created: bool


def admin_user_ensure(*, home: Path | None = None) -> AdminLogin:
    """Make sure the local stack has a superuser.

    The login comes from DJANGO_SUPERUSER_USERNAME / DJANGO_SUPERUSER_PASSWORD when set; otherwise a random password
    is generated once and kept in PISA_HOME/admin-password (mode 0600) so every `make run` can print it again.
    """
    home = home or Path(settings.PISA_HOME)
    username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or DEFAULT_ADMIN_USERNAME
    password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
    password_file = home / "admin-password"
    if not password:
        if password_file.exists():
            password = password_file.read_text().strip()
        else:
            password = secrets.token_urlsafe(12)
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.touch(mode=0o600)
            password_file.write_text(password + "\n")
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    if user is None:
        # A password given in the environment must be as strong as one set through the admin (the generated one is).
        password_validation.validate_password(password, User(username=username))
        User.objects.create_superuser(username=username, email=os.environ.get("DJANGO_SUPERUSER_EMAIL", ""),
                                      password=password)
        return AdminLogin(username=username, password=password, created=True)
    return AdminLogin(username=username, password=password if user.check_password(password) else None, created=False)
