"""Flask extensions, created unbound here and bound to the app in ``create_app``."""

from flask_mail import Mail
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base shared by every model."""


db = SQLAlchemy(model_class=Base)
mail = Mail()
csrf = CSRFProtect()
