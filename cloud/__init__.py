"""Google Cloud operations: Vertex AI and Dataflow requests built offline (``cloud.vertex``) and the training container."""
