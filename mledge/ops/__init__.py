"""Operations: settings, the local stack supervisor, the Airflow REST client, status and the demo."""
