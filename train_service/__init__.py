"""The Keras training worker: one training job at a time from the work queue."""
