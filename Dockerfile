# One image for every role (web, worker, beat, flower); docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PISA_HOME=/var/lib/pisa
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --system --home /var/lib/pisa pisa && mkdir -p /var/lib/pisa && chown pisa /var/lib/pisa \
 && SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    DATABASE_URL=postgresql://build@localhost/build REDIS_URL=redis://localhost:6379/0 \
    python manage.py collectstatic --noinput
USER pisa
EXPOSE 8000 5555
CMD ["gunicorn", "pisa_site.wsgi", "--bind", "0.0.0.0:8000", "--workers", "4", "--threads", "8"]
