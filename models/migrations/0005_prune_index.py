from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0004_api_keys')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Execution',
            index=Index(fields=['status', 'completed_at']),
        ),
    ]
