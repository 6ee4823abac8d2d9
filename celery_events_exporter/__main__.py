from celery_events_exporter.cli import main

if __name__ == "__main__":
    main()
