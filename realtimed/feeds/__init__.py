"""Activity feeds: activities logged by the application, stored, delivered live
to the rooms of their feeds, recovered from the store, read, searched and counted.

``service`` holds the service, ``http`` its routes."""
