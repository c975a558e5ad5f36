"""The xDS control plane: snapshot cache, ADS streams (SotW and delta), CSDS."""
