"""The query cluster: long-range scans of global views on Daft over Ray (the `cluster` extra).

Modules:
    engine       QueryCluster: which queries go to the cluster, their files from the catalog, the run
    outcome      Declined / ClusterResult: what the cluster answers (importable without Daft)
    translate    DataFusion's optimized logical plan rebuilt as a Daft DataFrame
    expressions  DataFusion expressions as Daft expressions, exactly or not at all
"""
