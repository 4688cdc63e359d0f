# The application image: web (gunicorn), worker and beat all run from it; see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# collectstatic needs no secrets or services; development settings let it import without them.
RUN DJANGO_ENV=development python manage.py collectstatic --noinput \
    && useradd --system --no-create-home --home-dir /app app \
    && chown -R app:app /app/var

USER app
EXPOSE 8000
CMD ["gunicorn", "vertex_email.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-"]
